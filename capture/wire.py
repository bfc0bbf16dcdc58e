"""Framing for the msgpack protocol between the proxy and the session manager.

Every message is one msgpack map with a type ``t`` and a version ``v``;
messages follow each other on the stream with no extra framing, which
``msgpack.Unpacker`` splits.  No I/O here: a ``Decoder`` takes bytes and
returns messages, so it is tested without sockets.

Message types (``t``), proxy -> session manager:
    hello   {instance, pid, worker, workers} first message on a connection; instance is new at each
                                         start of a proxy process, worker its number (0 the main one)
                                         of workers
    flows   {instance, items}            items: [[seq, [session ids], packed flow], ...]; a live
                                         (WebSocket) flow's items are [seq, [session ids], payload,
                                         op, ref], op "open" | "messages" | "close" (capture.delivery)
    call    {id, method, args}           a request/reply call for the admin API
    subscribe / unsubscribe {session}    live events of a session wanted or not
    stats   {instance, data}             the proxy process's counters, every second
Session manager -> proxy:
    welcome {pid, last_seq}              last_seq: highest stored seq for instance
    ack     {instance, seq}              every seq <= this one is stored
    rules   {sessions}                   the capturing sessions, pushed on change
    passthrough {hosts, suspects}        the auto-passthrough table, pushed on change: hosts
                                         [[client, host, since], ...], suspects [[client, host], ...]
                                         (connections closed before a request counted against them)
    chunk   {id, data}                   part of a streamed answer (exports), before its reply
    reply   {id, result} | {id, error: {status, message}}
    event   {session, event, data}       live events (new flows, state changes)
"""

from __future__ import annotations

from typing import Any

import msgpack

VERSION = 1
MAX_MESSAGE = 64 * 1024 * 1024


class WireError(ValueError):
    """The peer sent bytes that are not a valid message: drop the connection."""


def encode(kind: str, **fields: Any) -> bytes:
    """One message as bytes, ready to write."""
    fields["t"] = kind
    fields["v"] = VERSION
    return msgpack.packb(fields, use_bin_type=True)


class Decoder:
    """Splits a byte stream into messages, holding at most ``max_size`` bytes."""

    def __init__(self, max_size: int = MAX_MESSAGE) -> None:
        self._unpacker = msgpack.Unpacker(
            raw=False,
            max_buffer_size=max_size,
            strict_map_key=False,
        )

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Messages completed by ``data``; raises WireError on bad input."""
        try:
            self._unpacker.feed(data)
            messages = list(self._unpacker)
        except msgpack.BufferFull:
            raise WireError("message larger than the frame limit") from None
        except (ValueError, TypeError, msgpack.UnpackException) as e:  # TypeError: an unhashable map key
            raise WireError(f"malformed msgpack: {e}") from None
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("t"), str):
                raise WireError("message is not a map with a type")
            version = message.get("v")
            if type(version) is not int or version != VERSION:
                raise WireError(f"unsupported message version {message.get('v')!r}")
        return messages
