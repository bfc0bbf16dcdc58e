"""The WebSocket echo origin for bench/websocket.py: the ``websockets`` server, no compression.

Usage: ``wsecho.py PORT``.  Every message goes back as it came.
"""

from __future__ import annotations

import asyncio
import sys

from websockets.asyncio.server import serve


async def echo(connection) -> None:
    async for message in connection:
        await connection.send(message)


async def main(port: int) -> None:
    async with serve(echo, "127.0.0.1", port, compression=None, max_size=None, ping_interval=None):
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
