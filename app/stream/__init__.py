"""The live stream: what happens, published to a Redis Stream and served as Server-Sent Events."""
