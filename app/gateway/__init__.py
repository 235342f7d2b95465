"""API gateway building blocks: request transformation and upstream load balancing.

``transform`` rewrites the headers and query string of a proxied request (Kong
request-transformer semantics); ``balancer`` picks an upstream by weighted round robin and
ejects failing ones, with state shared across processes through Redis. The HTTP proxy that
uses them lives elsewhere.
"""
