"""Entry point of the session-manager process: ``python -m capture.sessiond --config PATH``.

The proxy process starts this as a supervised child.  It owns the store,
listens on the UNIX socket (mode 0600 in a 0700 directory), exits cleanly on
SIGTERM, and exits by itself if its parent goes away, so no orphan is left.
"""

from __future__ import annotations

import argparse
import os
import sys

from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.logger import Logger

from capture.child import load_settings, log_to_stdout, orphan_watch
from capture.identity import IdentityError, appliance_identity
from capture.sessiond.server import SessionFactory, SessionManager
from capture.sessiond.store import StoreError, open_store

log = Logger()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m capture.sessiond", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="etc/capture.ini", help="the appliance's INI file")
    options = parser.parse_args(argv)
    settings = load_settings("sessiond", options.config)

    from twisted.internet import reactor

    log_to_stdout()
    try:
        appliance = appliance_identity(settings.store.appliance_file)
    except IdentityError as e:
        print(f"sessiond: {e}", file=sys.stderr)
        return 1
    try:
        # A PostgreSQL store opens even while the database is down, and connects when it answers.
        store = open_store(settings.store.database, appliance=appliance)
    except (StoreError, OSError) as e:
        print(f"sessiond: cannot open the store: {e}", file=sys.stderr)
        return 1

    socket_path = settings.store.socket
    os.makedirs(os.path.dirname(socket_path), mode=0o700, exist_ok=True)
    os.chmod(os.path.dirname(socket_path), 0o700)
    rules_cache = os.path.join(os.path.dirname(settings.store.appliance_file), "rules-cache.json")
    manager = SessionManager(store, os.getpid(), reactor, appliance=appliance, rules_cache=rules_cache)
    manager.refresh_rules()
    endpoint = UNIXServerEndpoint(reactor, socket_path, mode=0o600, wantPID=True)
    listening = endpoint.listen(SessionFactory(manager))

    def failed(reason):
        log.error("cannot listen on {path}: {reason}", path=socket_path, reason=reason.getErrorMessage())
        reactor.stop()

    listening.addCallbacks(lambda port: log.info("session manager listening on {path}", path=socket_path), failed)

    orphan_watch(reactor).startService()
    # The worker thread finishes its call before the connection closes.
    reactor.addSystemEventTrigger("after", "shutdown", lambda: (manager.stop(), store.close()))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
