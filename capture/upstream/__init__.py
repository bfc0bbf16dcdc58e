"""Towards origins: one connector (TCP, a chained proxy, verified TLS), the HTTP client that runs over it, the pool."""
