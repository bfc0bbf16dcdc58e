"""Copy as curl: a POSIX shell command that replays a captured request.

The command aims to put the same request on the wire: same method, target,
headers in their captured order and body bytes.  curl adds headers of its
own (User-Agent, Accept, a form Content-Type for ``--data-binary``, Expect
for large bodies); where the captured request had none of these, the command
tells curl to leave them out.  Connection and proxy headers and
Content-Length are curl's business.  A body that is not UTF-8 text, or too
large for one command-line argument, is fed through stdin from base64 or
printf, which needs no bash-only quoting.
"""

from __future__ import annotations

import base64
import shlex

from capture.export import header_values, is_exchange, replay_headers, split_target, utf8
from capture.flow import Flow

__all__ = ["command"]

# Linux refuses a single exec argument over 128 KiB; stay well below it.
_MAX_ARGUMENT = 64 * 1024
_CONTINUATION = " \\\n  "


def command(flow: Flow) -> str:
    """The curl command line for ``flow``; ValueError for a tunnel or CONNECT, which curl cannot replay."""
    if not is_exchange(flow):
        raise ValueError("only HTTP requests can be replayed with curl")
    message = flow.request
    body = message.body
    has_body = bool(body)
    options: list[list[str]] = []  # each option with its argument, one per line
    if flow.method == "HEAD" and not has_body:
        options.append(["--head"])  # -X HEAD would make curl wait for a body that never comes
    elif not (flow.method == "GET" and not has_body) and not (flow.method == "POST" and has_body):
        options.append(["-X", flow.method])
    if flow.http_version == "1.0":
        options.append(["--http1.0"])
    elif flow.http_version == "2.0":
        options.append(["--http2"])
    path, _ = split_target(flow.path)
    if any(segment in (".", "..") for segment in path.split("/")):
        options.append(["--path-as-is"])
    if any(ch in flow.url for ch in "[]{}"):
        options.append(["--globoff"])
    options.append([flow.url])

    names = set()
    for key, value in replay_headers(message.headers):
        name = key.decode("latin-1")
        names.add(name.lower())
        if name.lower() == "host" and value.decode("latin-1").lower() == _authority(flow).lower():
            continue
        text = _header_text(value)
        # "Name:" would tell curl to drop the header; "Name;" sends it empty.
        options.append(["-H", f"{name}: {text}" if text else f"{name};"])
    # Headers curl would add on its own, which the captured request did not send.
    suppressed = ["user-agent", "accept"]
    if has_body:
        suppressed += ["content-type", "expect"]
    for name in suppressed:
        if name not in names:
            options.append(["-H", f"{name.title()}:"])
    if any("gzip" in value.lower() for value in header_values(message.headers, "accept-encoding")):
        options.append(["--compressed"])

    stdin = ""
    if has_body:
        body_text = utf8(body)
        # A leading "@" would make curl read a file; huge arguments fail to exec.
        if body_text is not None and len(body) <= _MAX_ARGUMENT and not body_text.startswith("@"):
            options.append(["--data-binary", body_text])
        else:
            options.append(["--data-binary", "@-"])
            if body_text is not None:
                stdin = f"printf %s {shlex.quote(body_text)} | "
            else:
                stdin = f"printf %s {base64.b64encode(body).decode('ascii')} | base64 -d | "

    line = stdin + "curl " + _CONTINUATION.join(" ".join(map(shlex.quote, option)) for option in options)
    notes = []
    if message.truncated or message.size > len(body):
        notes.append(
            f"# note: request body was truncated at capture ({len(body)} of {message.size} bytes stored);"
            " this replays only the stored bytes"
        )
    return "\n".join([*notes, line])


def _header_text(value: bytes) -> str:
    """A header value as text: UTF-8 when it is, else latin-1 (the shell gets UTF-8 either way)."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _authority(flow: Flow) -> str:
    default = 443 if flow.scheme == "https" else 80
    host = f"[{flow.host}]" if ":" in flow.host else flow.host
    return host if flow.port == default else f"{host}:{flow.port}"
