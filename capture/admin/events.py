"""``GET /api/sessions/ID/events``: Server-Sent Events, one per new flow or state change.

A reader that stops reading is dropped once a bounded backlog builds up,
rather than buffered without bound in the proxy process.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.web import server
from zope.interface import implementer

from capture.shipper import Shipper

KEEPALIVE_SECONDS = 15.0
MAX_BACKLOG = 1000  # events written while the reader's socket was full


@implementer(IPushProducer)
class EventStream:
    """One open event stream; it is also the request's producer, to learn when the reader lags."""

    def __init__(self, request: server.Request, shipper: Shipper, session_id: int, reactor: Any) -> None:
        self.request = request
        self.shipper = shipper
        self.session_id = session_id
        self.paused = False
        self.backlog = 0
        self._closed = False
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Accel-Buffering", b"no")
        request.registerProducer(self, True)
        request.write(b": capture events for session %d\n\n" % session_id)
        shipper.subscribe(session_id, self.send)
        self._keepalive = reactor.callLater(KEEPALIVE_SECONDS, self._ping, reactor)
        request.notifyFinish().addBoth(lambda _: self._close())

    def send(self, event: str, data: Any) -> None:
        if self._closed:
            return
        if self.paused:
            self.backlog += 1
            if self.backlog > MAX_BACKLOG:
                self._drop()
                return
        payload = json.dumps(data, separators=(",", ":")).encode("utf-8")
        self.request.write(b"event: %s\ndata: %s\n\n" % (event.encode("ascii"), payload))

    def _ping(self, reactor: Any) -> None:
        if not self._closed:
            self.request.write(b": keepalive\n\n")
            self._keepalive = reactor.callLater(KEEPALIVE_SECONDS, self._ping, reactor)

    def _drop(self) -> None:
        """Too slow: end the stream; the client may reconnect and list what it missed."""
        self._close()
        self.request.unregisterProducer()
        transport = self.request.channel.transport if self.request.channel else None
        if transport is not None:
            transport.abortConnection()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._keepalive.active():
            self._keepalive.cancel()
        self.shipper.unsubscribe(self.session_id, self.send)

    # IPushProducer: the transport tells us when the reader falls behind.
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.backlog = 0

    def stopProducing(self) -> None:
        self._close()
