"""capture: an HTTP/HTTPS capture proxy appliance built on Twisted."""

__version__ = "0.1.0"
