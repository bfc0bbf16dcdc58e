"""A WebSocket origin for the end-to-end tests: the ``websockets`` server in its own process.

Usage: ``ws_origin.py [--no-deflate] [CERT KEY]``; prints ``listening PORT``.
Each message is echoed back as it came (text as text, binary as binary),
except these text commands:

    close CODE REASON   the origin closes with that code and reason
    flood N SIZE        the origin sends N binary messages of SIZE bytes at once
    extensions          the origin answers with the Sec-WebSocket-Extensions it
                        was offered and the one it accepted, as "offered|accepted"
    ping                the origin pings the client and answers "pong" once it is ponged
    greet               the origin answers "hello" (a word the client never sent)
"""

from __future__ import annotations

import asyncio
import ssl
import sys

from websockets.asyncio.server import serve


async def handler(connection) -> None:
    async for message in connection:
        if isinstance(message, str) and message.startswith("close "):
            _, code, reason = message.split(" ", 2)
            await connection.close(int(code), reason)
            return
        if isinstance(message, str) and message.startswith("flood "):
            _, count, size = message.split()
            for _ in range(int(count)):
                await connection.send(b"\xab" * int(size))
            continue
        if message == "extensions":
            offered = connection.request.headers.get("Sec-WebSocket-Extensions", "")
            accepted = connection.response.headers.get("Sec-WebSocket-Extensions", "")
            await connection.send(f"{offered}|{accepted}")
            continue
        if message == "greet":
            await connection.send("hello")
            continue
        if message == "ping":
            waiter = await connection.ping(b"from origin")
            await asyncio.wait_for(waiter, 10)
            await connection.send("pong")
            continue
        await connection.send(message)


async def main(arguments: list[str]) -> None:
    deflate = "--no-deflate" not in arguments
    files = [a for a in arguments if not a.startswith("--")]
    context = None
    if files:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(files[0], files[1])
    async with serve(handler, "127.0.0.1", 0, ssl=context, compression="deflate" if deflate else None,
                     max_size=None, ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening {port}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
