"""The proxy's side of auto-passthrough: report what intercepted clients do, follow the pushed table.

The session manager decides (capture.sessiond.passthrough, by the rule in
capture.rejection) and pushes the table to every proxy process; here a
connection only looks its (client, host) pair up.  Reports go out only when
something goes wrong (an alert, a connection closed before a request), or,
for a pair with such closes counted against it, at its next first request:
never one per request.

An alert passes the host through at once in this process too, before the
session manager's push comes back, so the client's next connection is
already tunnelled.  The flow of a connection closed before a request is
recorded once the session manager has counted it, so it can say whether
that was the close that passed the host through.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.logger import Logger
from twisted.python.failure import Failure

from capture.rejection import CLOSES_IN_A_ROW, client_alert
from capture.shipper import Shipper
from capture.tls.verify import describe_tls_failure

REPORT_TIMEOUT = 2.0  # a flow waits at most this long for the count before it is recorded without it
PASSED = "; later connections from this client to this host are passed through"


class AutoPassthrough:
    """Per proxy process: the look-up per connection, and the reports."""

    log = Logger()

    def __init__(self, shipper: Shipper, reactor: Any, enabled: bool) -> None:
        self._shipper = shipper
        self._reactor = reactor
        self.enabled = enabled

    def passes(self, client: str, name: str) -> bool:
        return (client, name) in self._shipper.passthrough

    def entries(self) -> dict[tuple[str, str], float]:
        """The table as this process holds it: (client, host) -> since."""
        return self._shipper.passthrough

    def handshake_failed(self, client: str, name: str, start: float, reason: Failure | None,
                         record: Callable[[str], None]) -> None:
        """The intercepted handshake ended unfinished: an alert is a rejection, a cut only counts."""
        detail = describe_tls_failure(reason) if reason is not None else ""
        alert = client_alert(detail)
        if alert is None:
            self._closed(client, name, start, f"TLS handshake for {name} not finished: the client went away"
                         + (f" ({detail})" if detail else ""), record)
            return
        message = (f"TLS handshake for {name} failed: the client rejected the appliance's certificate "
                   f"(alert {alert}): it does not trust the capture CA, or the app pins")
        if self.enabled:
            key = (client, name)
            self._shipper.passthrough[key] = self._reactor.seconds()  # at once here; the push follows
            self._shipper.suspects.discard(key)
            self._report("passthrough.rejected", client=client, host=name, at=self._reactor.seconds())
            message += PASSED
        record(message)

    def closed_before_request(self, client: str, name: str, start: float, record: Callable[[str], None]) -> None:
        """The client finished the handshake, then closed without sending a request (an app that pins after it)."""
        self._closed(client, name, start, f"the client closed the TLS connection to {name} "
                     "after the handshake without sending a request", record)

    def request_seen(self, client: str, name: str) -> None:
        """A first request inside an intercepted connection: the client accepted our certificate."""
        key = (client, name)
        if key in self._shipper.suspects:
            self._shipper.suspects.discard(key)
            self._report("passthrough.succeeded", client=client, host=name)

    def _closed(self, client: str, name: str, start: float, message: str, record: Callable[[str], None]) -> None:
        if not self.enabled:
            record(message)
            return
        self._shipper.suspects.add((client, name))
        d = self._shipper.call("passthrough.closed", client=client, host=name, start=start, end=self._reactor.seconds())
        d.addTimeout(REPORT_TIMEOUT, self._reactor)

        def counted(result: Any) -> None:
            if isinstance(result, dict) and result.get("passed"):
                record(f"{message}; {CLOSES_IN_A_ROW} connections in a row ended before a request: the client "
                       f"does not trust the capture CA, or the app pins{PASSED}")
            else:
                count = result.get("count") if isinstance(result, dict) else None
                record(message + (f" ({count} of {CLOSES_IN_A_ROW} in a row before a passthrough)" if count else ""))

        d.addCallbacks(counted, lambda failure: record(message))
        d.addErrback(self._log_failure)

    def _report(self, method: str, **args: Any) -> None:
        """Tell the session manager; if it is away, the decision stays in this process (and is seeded back)."""
        self._shipper.call(method, **args).addErrback(lambda _: None)

    def _log_failure(self, failure: Failure) -> None:
        self.log.failure("recording a TLS failure failed", failure)
