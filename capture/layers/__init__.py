"""The proxy's layers, one per wire protocol; how they are hosted and hand on is in ``host.py``."""
