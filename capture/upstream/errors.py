"""Why a connection towards an origin failed, in words a tester can act on."""

from __future__ import annotations

from twisted.internet import defer, error
from twisted.python.failure import Failure

from capture.tls.verify import VerificationFailed


class UpstreamProxyFailed(Exception):
    """The chained proxy could not be reached, or refused; the message names it."""


def describe_connect_error(failure: Failure, host: str, port: int) -> tuple[int, str]:
    """(status, short text) for a failed connection to an origin."""
    where = f"{host}:{port}"
    if failure.check(error.DNSLookupError):
        return 502, f"cannot resolve {host}"
    if failure.check(error.ConnectionRefusedError):
        return 502, f"connection refused by {where}"
    if failure.check(error.TimeoutError, defer.CancelledError, error.ConnectingCancelledError):
        return 504, f"timed out connecting to {where}"
    if failure.check(VerificationFailed, UpstreamProxyFailed):
        return 502, str(failure.value)
    if failure.check(error.NoRouteError):
        return 502, f"no route to {where}"
    return 502, f"cannot connect to {where}: {failure.getErrorMessage()}"
