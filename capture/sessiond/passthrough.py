"""The appliance's one auto-passthrough table, in the session manager.

Every proxy process reports what its intercepted clients did (an alert, a
connection closed before a request, a first request after such closes);
the decision is made here once, whichever worker the connections landed on,
and the table is pushed to every proxy like session rules, so a proxy
decides per connection with a dictionary look-up.  The admin API lists and
clears it through calls.

It lives in memory: a restart of the session manager keeps it, because each
proxy hands back the hosts it was told on reconnecting ("passthrough.seed");
a restart of the whole appliance starts empty, and the next rejection
decides again (one alert, or three closed connections, as the first time).
"""

from __future__ import annotations

from typing import Any, Callable

from capture import wire
from capture.flow import iso_time
from capture.rejection import PassthroughTable


class Passthrough:
    """The table, its calls, and the message that pushes it."""

    def __init__(self, broadcast: Callable[[bytes], None], table: PassthroughTable | None = None) -> None:
        self.table = table or PassthroughTable()
        self._broadcast = broadcast
        self.calls: dict[str, Callable[..., Any]] = {
            "passthrough.list": self._list,
            "passthrough.forget": self._forget,
            "passthrough.rejected": self._rejected,
            "passthrough.closed": self._closed,
            "passthrough.succeeded": self._succeeded,
            "passthrough.seed": self._seed,
        }

    def message(self) -> bytes:
        table = self.table
        return wire.encode("passthrough", hosts=[[c, h, since] for (c, h), since in table.hosts.items()],
                           suspects=[list(key) for key in table.suspects])

    def _push(self) -> None:
        self._broadcast(self.message())

    def _list(self) -> dict[str, Any]:
        return {"passthrough": [{"client": client, "host": host, "since": iso_time(since)}
                                for (client, host), since in sorted(self.table.hosts.items())]}

    def _forget(self, client: str = "", host: str = "") -> dict[str, int]:
        forgotten = self.table.forget(str(client), str(host))
        self._push()
        return {"forgotten": forgotten}

    def _rejected(self, client: str, host: str, at: float) -> dict[str, Any]:
        if self.table.rejected((str(client), str(host)), float(at)):
            self._push()
        return {"passed": True}

    def _closed(self, client: str, host: str, start: float, end: float) -> dict[str, Any]:
        count = self.table.closed_early((str(client), str(host)), float(start), float(end))
        self._push()
        return {"passed": count == 0, "count": count}

    def _succeeded(self, client: str, host: str) -> None:
        if self.table.succeeded((str(client), str(host))):
            self._push()

    def _seed(self, hosts: list[list[Any]]) -> None:
        if self.table.seed((entry[0], entry[1], entry[2]) for entry in hosts):
            self._push()
