"""An extra proxy process: ``python -m capture.worker --config PATH --index N --port P``.

With ``[proxy] workers = N`` the twistd process starts N - 1 of these. Each
binds the proxy port with SO_REUSEPORT (the kernel spreads connections
across them), ships its own flows to the one session manager under its own
instance id and spill file, and on SIGTERM drains and flushes like the main
process. It exits by itself if the main process goes away.
"""

from __future__ import annotations

import argparse
import sys


from capture.child import load_settings, log_to_stdout, orphan_watch
from capture.tap import OrderedServices, ProxyPart, load_ca


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m capture.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="etc/capture.ini")
    parser.add_argument("--index", type=int, required=True, help="this worker's number, 1 and up")
    parser.add_argument("--port", type=int, required=True, help="the proxy port the main process bound")
    parser.add_argument("--admin-port", type=int, default=0, help="the admin port, refused as a target")
    options = parser.parse_args(argv)
    settings = load_settings("worker", options.config)

    from twisted.internet import reactor

    log_to_stdout()

    services = OrderedServices()
    part = ProxyPart(settings, reactor, load_ca(settings), index=options.index, port=options.port)
    part.add_to(services)
    if options.admin_port:
        part.proxy.own_ports.add(options.admin_port)
    orphan_watch(reactor).setServiceParent(services)

    services.privilegedStartService()
    services.startService()
    reactor.addSystemEventTrigger("before", "shutdown", services.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
