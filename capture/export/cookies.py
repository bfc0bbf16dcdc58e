"""The cookie jar a session saw: Set-Cookie and Cookie headers, as JSON or cookies.txt.

Set-Cookie parsing follows RFC 6265 section 5.2 (and 5.1.1 for dates) rather
than ``http.cookies``, which is a strict *generator* and silently drops or
mangles real-world headers (unquoted commas, odd dates, unknown attributes).
A tester wants what a browser would have stored, so we parse as one does.

Jar entries are plain dicts: ``name, value, domain, path, expires`` (ISO 8601
UTC, or None for a session cookie), ``httpOnly, secure, sameSite`` and
``hostOnly``.  As in browsers' cookie stores and cookies.txt, a cookie that
covers subdomains has a domain with a leading dot (``.example.com``); a
host-only cookie has the bare host.  The key is (name, domain, path).
"""

from __future__ import annotations

import calendar
import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from capture.export import header_values, is_exchange, split_target
from capture.flow import Flow, iso_time

__all__ = [
    "Cookie",
    "SetCookie",
    "covered",
    "default_path",
    "domain_match",
    "jar",
    "netscape",
    "parse_cookie_date",
    "parse_cookie_header",
    "parse_set_cookie",
]

# Latest time that ISO 8601 (and every cookies.txt reader) can show: 9999-12-31T23:59:59Z.
MAX_EXPIRY = 253402300799.0
# RFC 6265 5.2.2: Max-Age <= 0 means "the earliest representable time".
EARLIEST = float("-inf")

_DELIMITERS = re.compile(r"[\x09\x20-\x2f\x3b-\x40\x5b-\x60\x7b-\x7e]+")
_TIME = re.compile(r"(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\D.*)?\Z", re.S)
_DAY = re.compile(r"(\d{1,2})(?:\D.*)?\Z", re.S)
_YEAR = re.compile(r"(\d{2,4})(?:\D.*)?\Z", re.S)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_SAME_SITE = {"strict": "Strict", "lax": "Lax", "none": "None"}


@dataclass(frozen=True, slots=True)
class SetCookie:
    """One Set-Cookie header as parsed, before the request's defaults apply.

    ``max_age`` wins over ``expires`` when both are present; None means absent.
    """

    name: str
    value: str
    expires: float | None = None
    max_age: int | None = None
    domain: str | None = None
    path: str | None = None
    secure: bool = False
    http_only: bool = False
    same_site: str | None = None

    def expiry(self, now: float) -> float | None:
        """Absolute expiry in epoch seconds (``EARLIEST`` when already gone), or None for a session cookie."""
        if self.max_age is not None:
            return EARLIEST if self.max_age <= 0 else min(now + self.max_age, MAX_EXPIRY)
        return self.expires


@dataclass(frozen=True, slots=True)
class Cookie:
    """A cookie as a user agent would store it (RFC 6265 5.3)."""

    name: str
    value: str
    domain: str
    host_only: bool
    path: str
    expires: float | None = None
    secure: bool = False
    http_only: bool = False
    same_site: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return self.name, self.shown_domain, self.path

    @property
    def shown_domain(self) -> str:
        """The domain as cookies.txt and browsers show it: a leading dot covers subdomains."""
        return self.domain if self.host_only else "." + self.domain

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "domain": self.shown_domain,
            "path": self.path,
            "expires": None if self.expires is None else iso_time(max(self.expires, 0.0)),
            "httpOnly": self.http_only,
            "secure": self.secure,
            "sameSite": self.same_site,
            "hostOnly": self.host_only,
        }


def parse_cookie_date(text: str) -> float | None:
    """An RFC 6265 5.1.1 cookie-date as epoch seconds, or None when it does not parse.

    The algorithm is deliberately lenient: it finds a time, a day, a month
    and a year among the tokens in any order, as browsers do.
    """
    time = day = month = year = None
    for token in _DELIMITERS.split(text):
        if not token:
            continue
        if time is None and (found := _TIME.match(token)):
            time = tuple(int(part) for part in found.groups())
        elif day is None and (found := _DAY.match(token)):
            day = int(found.group(1))
        elif month is None and token[:3].lower() in _MONTHS:
            month = _MONTHS.index(token[:3].lower()) + 1
        elif year is None and (found := _YEAR.match(token)):
            year = int(found.group(1))
    if time is None or day is None or month is None or year is None:
        return None
    if 70 <= year <= 99:
        year += 1900
    elif 0 <= year <= 69:
        year += 2000
    hour, minute, second = time
    if not 1 <= day <= 31 or year < 1601 or hour > 23 or minute > 59 or second > 59:
        return None
    try:
        moment = datetime(year, month, day, hour, minute, second)
    except ValueError:  # 30 February and the like
        return None
    return min(float(calendar.timegm(moment.timetuple())), MAX_EXPIRY)


def parse_set_cookie(header: str) -> SetCookie | None:
    """Parse one Set-Cookie value per RFC 6265 5.2; None when the cookie must be ignored."""
    pair, _, attributes = header.partition(";")
    name, equals, value = pair.partition("=")
    name, value = name.strip(" \t"), value.strip(" \t")
    if not equals or not name:
        return None
    fields: dict[str, Any] = {}
    for attribute in attributes.split(";"):
        key, _, argument = attribute.partition("=")
        key, argument = key.strip(" \t").lower(), argument.strip(" \t")
        if key == "expires":
            expires = parse_cookie_date(argument)
            if expires is not None:
                fields["expires"] = expires
        elif key == "max-age":
            if re.fullmatch(r"-?\d+", argument):
                fields["max_age"] = int(argument)
        elif key == "domain":
            if argument:
                fields["domain"] = argument.removeprefix(".").lower()
        elif key == "path":
            fields["path"] = argument if argument.startswith("/") else None
        elif key == "secure":
            fields["secure"] = True
        elif key == "httponly":
            fields["http_only"] = True
        elif key == "samesite":
            fields["same_site"] = _SAME_SITE.get(argument.lower())
    return SetCookie(name=name, value=value, **fields)


def parse_cookie_header(header: str) -> list[tuple[str, str]]:
    """The (name, value) pairs of a request's Cookie header, in order; pairs without a name are skipped."""
    pairs = []
    for piece in header.split(";"):
        name, equals, value = piece.partition("=")
        name = name.strip(" \t")
        if equals and name:
            pairs.append((name, value.strip(" \t")))
    return pairs


def default_path(request_path: str) -> str:
    """RFC 6265 5.1.4: the directory of the request path, the default cookie path."""
    path, _ = split_target(request_path)
    if not path.startswith("/") or path.count("/") == 1:
        return "/"
    return path[: path.rindex("/")]


def domain_match(host: str, domain: str) -> bool:
    """RFC 6265 5.1.3: ``host`` is ``domain`` or a subdomain of it (never for IP addresses)."""
    host, domain = host.lower().rstrip("."), domain.lower().rstrip(".")
    if host == domain:
        return True
    return host.endswith("." + domain) and not _is_ip(host)


def covered(host: str, domains: Iterable[str]) -> bool:
    """Whether a session's cookie domain list covers ``host``: empty covers all, a domain its subdomains."""
    wanted = [d.strip().lower().removeprefix("*.").removeprefix(".") for d in domains]
    wanted = [d for d in wanted if d]
    return not wanted or any(domain_match(host, domain) for domain in wanted)


def _path_match(request_path: str, cookie_path: str) -> bool:
    path, _ = split_target(request_path)
    if path == cookie_path:
        return True
    return path.startswith(cookie_path) and (cookie_path.endswith("/") or path[len(cookie_path)] == "/")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _store(parsed: SetCookie, host: str, request_path: str, now: float) -> Cookie | None:
    """RFC 6265 5.3: the cookie a user agent stores for ``parsed``, or None when it rejects it."""
    host = host.lower().rstrip(".")
    if parsed.domain is not None:
        if not domain_match(host, parsed.domain):
            return None
        # An IP address has no subdomains: Domain= naming it is the host itself.
        domain, host_only = parsed.domain, _is_ip(host)
    else:
        domain, host_only = host, True
    return Cookie(
        name=parsed.name,
        value=parsed.value,
        domain=domain,
        host_only=host_only,
        path=parsed.path or default_path(request_path),
        expires=parsed.expiry(now),
        secure=parsed.secure,
        http_only=parsed.http_only,
        same_site=parsed.same_site,
    )


def _sent(cookie: Cookie, name: str, host: str, request_path: str) -> bool:
    """Whether a request to ``host`` and ``request_path`` would carry ``cookie`` under ``name``."""
    if cookie.name != name or not _path_match(request_path, cookie.path):
        return False
    return cookie.domain == host if cookie.host_only else domain_match(host, cookie.domain)


def jar(flows: Iterable[Flow], domains: list[str]) -> list[dict[str, Any]]:
    """The cookies the flows set or sent, for hosts that ``domains`` covers.

    Flows are taken in order: a later Set-Cookie replaces an earlier cookie
    with the same (name, domain, path), and one that has already expired at
    the flow's time (Max-Age <= 0, or Expires in the past) deletes it.
    Cookies a request sent that no Set-Cookie explained are added as
    host-only cookies on path ``/``.
    """
    cookies: dict[tuple[str, str, str], Cookie] = {}
    for flow in flows:
        if not is_exchange(flow) or not covered(flow.host, domains):
            continue
        host = flow.host.lower().rstrip(".")
        for header in header_values(flow.request.headers, "cookie"):
            for name, value in parse_cookie_header(header):
                if not any(_sent(known, name, host, flow.path) for known in cookies.values()):
                    sent = Cookie(name=name, value=value, domain=host, host_only=True, path="/")
                    cookies[sent.key] = sent
        if flow.response is None:
            continue
        now = flow.response_start or flow.end or flow.start
        for header in header_values(flow.response.headers, "set-cookie"):
            parsed = parse_set_cookie(header)
            stored = None if parsed is None else _store(parsed, host, flow.path, now)
            if stored is None:
                continue
            if stored.expires is not None and stored.expires <= now:
                cookies.pop(stored.key, None)
            else:
                cookies[stored.key] = stored
    return [cookie.as_dict() for cookie in cookies.values()]


def netscape(cookies: Iterable[dict[str, Any]]) -> str:
    """The jar as a Netscape ``cookies.txt``, as curl writes it and ``MozillaCookieJar`` loads it.

    Session cookies get expiry 0; HttpOnly cookies are prefixed ``#HttpOnly_``.
    A cookie whose fields hold a tab or a line break cannot be written and is
    left out.
    """
    lines = ["# Netscape HTTP Cookie File", "# Exported by capture.", ""]
    for cookie in cookies:
        expires = cookie.get("expires")
        epoch = 0 if expires is None else int(datetime.fromisoformat(expires.replace("Z", "+00:00")).timestamp())
        domain = cookie["domain"]
        fields = [
            domain,
            "TRUE" if domain.startswith(".") else "FALSE",
            cookie["path"],
            "TRUE" if cookie.get("secure") else "FALSE",
            str(epoch),
            cookie["name"],
            cookie["value"],
        ]
        if any(ch in field for field in fields for ch in "\t\r\n"):
            continue
        prefix = "#HttpOnly_" if cookie.get("httpOnly") else ""
        lines.append(prefix + "\t".join(fields))
    return "\n".join(lines) + "\n"
