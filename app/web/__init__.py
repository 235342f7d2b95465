"""The HTTP shell every blueprint shares: the Api/Blueprint subclasses, problem+json errors,
CORS, and request hygiene."""
