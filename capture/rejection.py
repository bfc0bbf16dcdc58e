"""When has a client rejected the appliance's certificate for a host?  The rule, and one table for it.

A rejection (SPEC 5) is either a TLS alert from the client during the
handshake (unknown CA, bad certificate, certificate unknown...), or the same
client closing connections to the same host before sending a request three
times in a row with no successful exchange between.  A connection merely
cut (an app killed, Wi-Fi lost, a load generator stopping) is not a
rejection by itself.

"In a row" means attempts one after another, as an app retrying does: a
closed connection only adds to the count if it began after the last one
counted had ended.  Connections cut at the same moment (ten clients of a
load generator stopped at once, a phone losing Wi-Fi with several
connections open) count once.  Any request sent inside an intercepted
connection (the client accepted our certificate) resets the count.

The session manager keeps the one ``PassthroughTable`` of the appliance and
pushes it to every proxy process; this module does no I/O, so the rule is
tested without sockets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

Key = tuple[str, str]  # (client address, host name)

CLOSES_IN_A_ROW = 3
MAX_ENTRIES = 4096  # per table; past it the oldest entry goes

# OpenSSL names an alert it received from the peer "tlsv1 alert unknown ca",
# "sslv3 alert bad certificate", "tlsv13 alert certificate required"...;
# errors it raises itself ("unexpected eof while reading") have no such words.
_ALERT = re.compile(r"\b(?:sslv3|tlsv1\d*|ssl/tls) alert ([a-z][a-z ]*[a-z])")


def client_alert(detail: str) -> str | None:
    """The alert the client sent ("unknown ca"), from OpenSSL's description of a failed handshake; None if it sent none."""
    match = _ALERT.search(detail.lower())
    return match.group(1) if match else None


@dataclass(slots=True)
class _Streak:
    count: int
    last_end: float  # when the last connection counted ended


class PassthroughTable:
    """Hosts passed through per client, and the counts of connections closed before a request."""

    def __init__(self, limit: int = MAX_ENTRIES) -> None:
        self.hosts: dict[Key, float] = {}  # -> since (epoch seconds)
        self._streaks: dict[Key, _Streak] = {}
        self._limit = limit

    @property
    def suspects(self) -> list[Key]:
        """Pairs with connections counted against them: a request from one of them resets its count."""
        return list(self._streaks)

    def rejected(self, key: Key, at: float) -> bool:
        """The client sent an alert: pass the host through.  True if that is new."""
        self._streaks.pop(key, None)
        if key in self.hosts:
            return False
        self._add(self.hosts, key, at)
        return True

    def closed_early(self, key: Key, start: float, end: float) -> int:
        """A connection from start to end closed before a request; the count it leaves (0 if passed through).

        Once the count reaches CLOSES_IN_A_ROW the host is passed through.
        """
        if key in self.hosts:
            return 0
        streak = self._streaks.get(key)
        if streak is None:
            self._add(self._streaks, key, _Streak(1, end))
            return 1
        if start >= streak.last_end:  # a new attempt, not one cut together with the last
            streak.count += 1
            streak.last_end = end
        if streak.count >= CLOSES_IN_A_ROW:
            del self._streaks[key]
            self._add(self.hosts, key, end)
            return 0
        return streak.count

    def succeeded(self, key: Key) -> bool:
        """The client sent a request inside an intercepted connection.  True if a count was reset."""
        return self._streaks.pop(key, None) is not None

    def seed(self, entries: Iterable[tuple[str, str, float]]) -> bool:
        """Take decisions a proxy still holds (after a restart of the session manager).  True if any was new."""
        added = False
        for client, host, since in entries:
            key = (str(client), str(host))
            if key not in self.hosts:
                self._add(self.hosts, key, float(since))
                added = True
        return added

    def forget(self, client: str = "", host: str = "") -> int:
        """Drop passed-through hosts (all, or those of a client and/or host) so they are intercepted again."""
        gone = [key for key in self.hosts if (not client or key[0] == client) and (not host or key[1] == host)]
        for key in gone:
            del self.hosts[key]
        for key in [key for key in self._streaks if (not client or key[0] == client) and (not host or key[1] == host)]:
            del self._streaks[key]
        return len(gone)

    def _add(self, table: dict, key: Key, value: object) -> None:
        if len(table) >= self._limit:
            del table[next(iter(table))]  # the oldest: dicts keep insertion order
        table[key] = value
