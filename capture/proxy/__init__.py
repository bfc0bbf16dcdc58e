"""The forward proxy: the client connection that hosts a layer, admission, limits, drain and policy.

``factory.ProxyFactory`` is what every connection shares (and what the
layers reach as ``host.services``); ``connection.ClientConnection`` is one
client's TCP connection; ``stack.LayerStack`` decides which layer follows
which.  How the layers sit on one another is described in the README
("How the proxy is arranged") and in ``capture.layers.host``.
"""
