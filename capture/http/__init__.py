"""HTTP independent of the wire: the version-neutral Exchange, its stream interfaces, and HTTP/1 and HTTP/2 header rules."""
