"""Web UI sign-ins: the cookie sessions and the checks that keep other pages out.

Sans-I/O: the clock is passed in, requests are seen only as their headers,
so every rule here is tested without a socket.

The cookie holds a random id, never the admin token or anything derived from
it: a stolen cookie dies with its sign-in (sign-out, expiry, a restart), the
token does not leak through it. Browsers neither separate cookies by port nor
treat another port as another site, so a page on another port of the lab
machine would send the cookie along; the Origin check is what refuses it.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Callable

COOKIE = "capture_ui"
LIFETIME = 8 * 3600.0  # a lab working day, then sign in again
IDLE = 3600.0  # unused for this long, a sign-in ends sooner
MAX_SIGNINS = 1000  # the oldest go first past this: a flood of sign-ins cannot grow memory
SAFE_METHODS = (b"GET", b"HEAD")


class SignIns:
    """The live sign-ins of this admin listener, in memory: a restart signs everyone out.

    The token is read at start, so a new token (which needs a restart) ends every sign-in too.
    """

    def __init__(self, token: str, clock: Callable[[], float]) -> None:
        self._token = token.encode("utf-8")
        self._clock = clock
        self._live: dict[str, tuple[float, float]] = {}  # id -> (created, last used)

    def token_matches(self, token: bytes) -> bool:
        return bool(token) and hmac.compare_digest(token, self._token)

    def sign_in(self, token: bytes) -> str | None:
        """A new sign-in id for the right token, None for a wrong one."""
        if not self.token_matches(token):
            return None
        now = self._clock()
        self._expire(now)
        while len(self._live) >= MAX_SIGNINS:
            del self._live[next(iter(self._live))]
        sign_in = secrets.token_urlsafe(32)
        self._live[sign_in] = (now, now)
        return sign_in

    def valid(self, sign_in: str | None) -> bool:
        """Whether the id is live; using it keeps it from going idle."""
        if not sign_in:
            return False
        entry = self._live.get(sign_in)
        now = self._clock()
        if entry is None or now - entry[0] > LIFETIME or now - entry[1] > IDLE:
            self._live.pop(sign_in, None)
            return False
        self._live[sign_in] = (entry[0], now)
        return True

    def sign_out(self, sign_in: str | None) -> None:
        if sign_in:
            self._live.pop(sign_in, None)

    def _expire(self, now: float) -> None:
        for sign_in, (created, used) in list(self._live.items()):
            if now - created > LIFETIME or now - used > IDLE:
                del self._live[sign_in]


def cookie_value(cookie_header: bytes | None) -> str | None:
    """Our cookie's value out of a Cookie header, or None."""
    for part in (cookie_header or b"").split(b";"):
        name, _, value = part.strip().partition(b"=")
        if name == COOKIE.encode("ascii") and value:
            return value.decode("ascii", "replace")
    return None


def set_cookie(sign_in: str, secure: bool) -> bytes:
    """The Set-Cookie header value: HttpOnly, SameSite=Strict, host-only, for the whole listener."""
    flags = "; Secure" if secure else ""
    return f"{COOKIE}={sign_in}; Path=/; HttpOnly; SameSite=Strict; Max-Age={int(LIFETIME)}{flags}".encode("ascii")


def clear_cookie(secure: bool) -> bytes:
    flags = "; Secure" if secure else ""
    return f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{flags}".encode("ascii")


def own_origin(host_header: bytes | None, secure: bool) -> bytes | None:
    """The listener's own origin as the browser names it: scheme and the Host it was asked for."""
    if not host_header:
        return None
    return (b"https://" if secure else b"http://") + host_header.strip().lower()


def cookie_request_allowed(method: bytes, origin: bytes | None, fetch_site: bytes | None,
                           host_header: bytes | None, secure: bool) -> bool:
    """May a request authenticated by the cookie (not the token) go ahead?

    A state change needs an Origin equal to the listener's own. Any request a
    browser marks as coming from another origin (``Sec-Fetch-Site``) is
    refused too, so another page cannot even start an export with the cookie.
    """
    if fetch_site is not None and fetch_site.lower() not in (b"same-origin", b"none"):
        return False
    if method in SAFE_METHODS:
        return True
    expected = own_origin(host_header, secure)
    return origin is not None and expected is not None and origin.strip().lower() == expected
