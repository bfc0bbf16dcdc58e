"""Tests for capture.export.cookies: RFC 6265 parsing, the session's jar, and cookies.txt."""

from __future__ import annotations

import calendar
from datetime import datetime
from http.cookiejar import HTTPONLY_ATTR, MozillaCookieJar
from pathlib import Path

import pytest

from capture.export import cookies
from capture.export.cookies import (
    SetCookie,
    covered,
    default_path,
    domain_match,
    jar,
    netscape,
    parse_cookie_date,
    parse_cookie_header,
    parse_set_cookie,
)
from test_export_samples import T0, flow, message, samples

RESPONSE_TIME = T0 + 0.100  # when the sample flows' responses start


def epoch(*args: int) -> float:
    return float(calendar.timegm(datetime(*args).timetuple()))


def setting(*set_cookies: str, host: str = "api.example.com", path: str = "/", **fields):
    """A flow whose response sets the given cookies."""
    return flow(
        host=host,
        path=path,
        request=message([("Host", host)]),
        response=message([("Set-Cookie", value) for value in set_cookies]),
        **fields,
    )


def sending(cookie_header: str, host: str = "api.example.com", path: str = "/"):
    """A flow whose request sends the given Cookie header."""
    return flow(host=host, path=path, request=message([("Host", host), ("Cookie", cookie_header)]))


def only(result: list[dict]) -> dict:
    assert len(result) == 1, result
    return result[0]


# -- cookie-date (RFC 6265 5.1.1) ------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # RFC 1123
        "Sunday, 06-Nov-94 08:49:37 GMT",  # RFC 850
        "Sun Nov  6 08:49:37 1994",  # asctime
        "06 Nov 1994 08:49:37",
        "Sun, 06-Nov-1994 08:49:37 GMT",  # what many servers send
        "sun, 06 NOV 1994 08:49:37 utc",
        "Nov 6 08:49:37 1994 GMT+0100",  # trailing junk after tokens is ignored
    ],
)
def test_cookie_dates_browsers_accept(text: str) -> None:
    """The lenient date algorithm reads the formats servers actually send."""
    assert parse_cookie_date(text) == epoch(1994, 11, 6, 8, 49, 37)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not a date",
        "Sun, 06 Nov 1994",  # no time
        "Sun, 30 Feb 2024 00:00:00 GMT",  # no such day
        "Sun, 06 Nov 1600 08:49:37 GMT",  # before 1601
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 32 Nov 1994 08:49:37 GMT",
    ],
)
def test_cookie_dates_rejected(text: str) -> None:
    """Dates the algorithm fails on give None (and the Expires attribute is ignored)."""
    assert parse_cookie_date(text) is None


def test_two_digit_years() -> None:
    """70-99 are 19xx, 00-69 are 20xx."""
    assert parse_cookie_date("01 Jan 70 00:00:00") == 0.0
    assert parse_cookie_date("01 Jan 69 00:00:00") == epoch(2069, 1, 1)


# -- Set-Cookie (RFC 6265 5.2) ---------------------------------------------------


def test_every_attribute() -> None:
    """Expires, Max-Age, Domain, Path, Secure, HttpOnly and SameSite are read, case-insensitively."""
    parsed = parse_set_cookie(
        "id=a3fWa; Expires=Wed, 21 Oct 2037 07:28:00 GMT; max-age=60; DOMAIN=.Example.COM; "
        "path=/docs; SECURE; httponly; SameSite=strict"
    )
    assert parsed == SetCookie(
        name="id",
        value="a3fWa",
        expires=epoch(2037, 10, 21, 7, 28),
        max_age=60,
        domain="example.com",
        path="/docs",
        secure=True,
        http_only=True,
        same_site="Strict",
    )
    assert parsed.expiry(100.0) == 160.0  # Max-Age wins over Expires


@pytest.mark.parametrize(
    "header, expected",
    [
        ("a=b", SetCookie("a", "b")),
        ("  a  =  b c  ; ", SetCookie("a", "b c")),
        ("a=", SetCookie("a", "")),
        ('a="quoted"', SetCookie("a", '"quoted"')),
        ("a=b=c; Path=/", SetCookie("a", "b=c", path="/")),
        ("a=b; Max-Age=abc", SetCookie("a", "b")),  # not digits: ignored
        ("a=b; Max-Age=+5", SetCookie("a", "b")),
        ("a=b; Max-Age=-1", SetCookie("a", "b", max_age=-1)),
        ("a=b; Expires=garbage", SetCookie("a", "b")),
        ("a=b; Domain=", SetCookie("a", "b")),
        ("a=b; Path=relative", SetCookie("a", "b", path=None)),
        ("a=b; Path=/x; Path=", SetCookie("a", "b", path=None)),  # the last Path wins
        ("a=b; SameSite=whatever", SetCookie("a", "b")),
        ("a=b; SameSite=None; Secure", SetCookie("a", "b", same_site="None", secure=True)),
        ("a=b; Unknown=1; Priority=High", SetCookie("a", "b")),
        ("a=b; Expires=Thu, 01 Jan 1970 00:00:00 GMT", SetCookie("a", "b", expires=0.0)),
    ],
)
def test_quirky_set_cookie_values(header: str, expected: SetCookie) -> None:
    """Whitespace, quotes, '=' in values, bad and unknown attributes follow RFC 6265 5.2."""
    assert parse_set_cookie(header) == expected


@pytest.mark.parametrize("header", ["", "novalue", "=b", " = b; Path=/", "; a=b"])
def test_set_cookie_ignored(header: str) -> None:
    """No '=' or an empty name: the whole Set-Cookie is ignored."""
    assert parse_set_cookie(header) is None


def test_cookie_header() -> None:
    """A request's Cookie header splits into pairs, keeping '=' in values and skipping nameless ones."""
    assert parse_cookie_header("a=1; b=x=y;c=;  d = 2 ; bare; =v") == [("a", "1"), ("b", "x=y"), ("c", ""), ("d", "2")]


@pytest.mark.parametrize(
    "path, expected",
    [("/", "/"), ("", "/"), ("/a", "/"), ("/a/", "/a"), ("/a/b", "/a"), ("/a/b/c?x=/y", "/a/b"), ("x", "/")],
)
def test_default_path(path: str, expected: str) -> None:
    """RFC 6265 5.1.4: the directory of the request path, ignoring the query."""
    assert default_path(path) == expected


def test_domain_match() -> None:
    """A domain matches itself and its subdomains, never a suffix that is not a label, never for IPs."""
    assert domain_match("example.com", "example.com")
    assert domain_match("a.b.Example.com", "example.COM")
    assert not domain_match("badexample.com", "example.com")
    assert not domain_match("example.com", "a.example.com")
    assert not domain_match("1.2.3.4", "2.3.4")
    assert domain_match("1.2.3.4", "1.2.3.4")


def test_covered() -> None:
    """An empty list covers all; an entry covers itself and subdomains; '*.' and '.' prefixes work."""
    assert covered("anything.test", [])
    assert covered("api.example.com", ["example.com"])
    assert covered("example.com", ["example.com"])
    assert covered("api.example.com", ["*.example.com"])
    assert covered("api.example.com", [".Example.com"])
    assert not covered("badexample.com", ["example.com"])
    assert not covered("other.org", ["example.com", "example.net"])


# -- the jar ---------------------------------------------------------------------


def test_jar_entry_with_every_field() -> None:
    """Each jar entry has name, value, domain, path, expires, httpOnly, secure, sameSite (and hostOnly)."""
    result = jar(
        [
            setting(
                "id=42; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Domain=example.com; Path=/; Secure; HttpOnly; SameSite=Lax"
            )
        ],
        [],
    )
    assert only(result) == {
        "name": "id",
        "value": "42",
        "domain": ".example.com",
        "path": "/",
        "expires": "2037-10-21T07:28:00.000Z",
        "httpOnly": True,
        "secure": True,
        "sameSite": "Lax",
        "hostOnly": False,
    }


def test_jar_defaults() -> None:
    """No Domain: host-only on the flow's host; no Path: the default path; no expiry: a session cookie."""
    cookie = only(jar([setting("s=1", host="API.example.com", path="/v1/users/7?x=1")], []))
    assert (cookie["domain"], cookie["hostOnly"], cookie["path"]) == ("api.example.com", True, "/v1/users")
    assert cookie["expires"] is None
    assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (False, False, None)


def test_max_age_counts_from_the_response() -> None:
    """Max-Age is relative to the flow's response time."""
    cookie = only(jar([setting("m=1; Max-Age=3600")], []))
    assert cookie["expires"] == "2023-11-14T23:13:20.100Z"
    assert RESPONSE_TIME + 3600 == pytest.approx(epoch(2023, 11, 14, 23, 13, 20) + 0.1)


def test_foreign_domain_is_rejected() -> None:
    """A Domain the host does not domain-match is ignored, as a browser would."""
    assert jar([setting("x=1; Domain=other.com"), setting("y=1; Domain=sub.api.example.com")], []) == []


def test_domain_on_an_ip_host_is_host_only() -> None:
    """Domain naming the IP host itself is accepted as host-only."""
    cookie = only(jar([setting("x=1; Domain=127.0.0.1", host="127.0.0.1")], []))
    assert (cookie["domain"], cookie["hostOnly"]) == ("127.0.0.1", True)


def test_domain_filter() -> None:
    """Only flows whose host the session's domains cover contribute; empty means every domain."""
    flows = [
        setting("a=1", host="example.com"),
        setting("b=1", host="api.example.com"),
        setting("c=1", host="badexample.com"),
        setting("d=1", host="other.org"),
    ]
    names = lambda domains: [c["name"] for c in jar(flows, domains)]  # noqa: E731
    assert names([]) == ["a", "b", "c", "d"]
    assert names(["example.com"]) == ["a", "b"]
    assert names(["*.example.com"]) == ["a", "b"]
    assert names(["api.example.com", "other.org"]) == ["b", "d"]


def test_later_values_replace_earlier() -> None:
    """The same (name, domain, path) set again replaces the value, keeping its place."""
    result = jar(
        [
            setting("a=1", "b=1"),
            setting("a=2; Secure"),
            setting("a=3; Path=/other"),  # a different path is a different cookie
            setting("a=4; Domain=api.example.com"),  # and so is a domain cookie
        ],
        [],
    )
    assert [(c["name"], c["value"], c["domain"], c["path"], c["secure"]) for c in result] == [
        ("a", "2", "api.example.com", "/", True),
        ("b", "1", "api.example.com", "/", False),
        ("a", "3", "api.example.com", "/other", False),
        ("a", "4", ".api.example.com", "/", False),
    ]


@pytest.mark.parametrize(
    "deleting",
    [
        "a=; Max-Age=0",
        "a=gone; Max-Age=-5",
        "a=; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
        "a=; Max-Age=0; Expires=Wed, 21 Oct 2037 07:28:00 GMT",  # Max-Age wins
    ],
)
def test_deletion(deleting: str) -> None:
    """Max-Age <= 0 or an Expires before the flow's time deletes the cookie."""
    assert jar([setting("a=1", "b=1"), setting(deleting)], []) == [only(jar([setting("b=1")], []))]


def test_deleting_needs_the_same_domain_and_path() -> None:
    """A deletion for another path leaves the cookie alone."""
    result = jar([setting("a=1; Path=/x"), setting("a=; Max-Age=0; Path=/y")], [])
    assert only(result)["path"] == "/x"


def test_request_cookies_add_unknown_ones() -> None:
    """Cookie headers add cookies no Set-Cookie explained, as host-only on '/'; known ones are not duplicated."""
    result = jar(
        [
            setting("known=1; Domain=example.com; Path=/api"),
            sending("known=1; extra=7", path="/api/v1"),
            sending("extra=8; other=9", host="www.example.com"),
        ],
        [],
    )
    assert [(c["name"], c["value"], c["domain"], c["path"]) for c in result] == [
        ("known", "1", ".example.com", "/api"),
        ("extra", "7", "api.example.com", "/"),
        ("extra", "8", "www.example.com", "/"),
        ("other", "9", "www.example.com", "/"),
    ]
    assert all(c["expires"] is None for c in result)


def test_set_cookie_replaces_a_cookie_first_seen_in_a_request() -> None:
    """A later Set-Cookie for the same key replaces what a request revealed."""
    result = jar([sending("sid=old"), setting("sid=new; Path=/")], [])
    assert only(result)["value"] == "new"


def test_tunnels_and_errors_do_not_break_the_jar() -> None:
    """Non-HTTP records are skipped; a flow without a response still contributes its request cookies."""
    result = jar(samples().values(), [])
    names = {(c["name"], c["domain"]) for c in result}
    assert ("sid", "api.example.com") in names
    assert ("pref", ".example.com") in names
    assert ("session", "shop.example.com") in names


# -- cookies.txt -----------------------------------------------------------------


def test_netscape_format() -> None:
    """Header line, tab-separated fields, TRUE/FALSE flags, epoch expiry, 0 for session, #HttpOnly_ prefix."""
    result = jar(
        [
            setting("plain=1"),
            setting("dom=2; Domain=example.com; Path=/p; Secure; Expires=Wed, 21 Oct 2037 07:28:00 GMT"),
            setting("ho=3; HttpOnly"),
        ],
        [],
    )
    text = netscape(result)
    lines = text.splitlines()
    assert lines[0] == "# Netscape HTTP Cookie File"
    body = [line for line in lines if line and not line.startswith("# ")]
    assert body == [
        "api.example.com\tFALSE\t/\tFALSE\t0\tplain\t1",
        f".example.com\tTRUE\t/p\tTRUE\t{int(epoch(2037, 10, 21, 7, 28))}\tdom\t2",
        "#HttpOnly_api.example.com\tFALSE\t/\tFALSE\t0\tho\t3",
    ]
    assert text.endswith("\n")


def test_netscape_skips_what_it_cannot_write() -> None:
    """A value with a tab would break the format, so that cookie is left out."""
    text = netscape([{"name": "t", "value": "a\tb", "domain": "x.com", "path": "/", "expires": None}])
    assert "\tt\t" not in text


def test_mozilla_cookie_jar_loads_it(tmp_path: Path) -> None:
    """http.cookiejar.MozillaCookieJar loads the file with every field intact."""
    result = jar(
        [
            setting("plain=1"),
            setting("dom=two; Domain=example.com; Path=/p; Secure; Expires=Wed, 21 Oct 2037 07:28:00 GMT"),
            setting("ho=3; HttpOnly; Max-Age=60"),
            sending("req=4", host="www.example.com"),
        ],
        [],
    )
    path = tmp_path / "cookies.txt"
    path.write_text(netscape(result))
    loaded = MozillaCookieJar()
    loaded.load(str(path), ignore_discard=True, ignore_expires=True)
    found = {c.name: c for c in loaded}
    assert set(found) == {"plain", "dom", "ho", "req"}
    assert (found["plain"].value, found["plain"].domain, found["plain"].path) == ("1", "api.example.com", "/")
    assert not found["plain"].domain_specified and not found["plain"].secure
    dom = found["dom"]
    assert (dom.value, dom.domain, dom.path, dom.secure) == ("two", ".example.com", "/p", True)
    assert dom.domain_specified and dom.domain_initial_dot
    assert dom.expires == int(epoch(2037, 10, 21, 7, 28))
    assert found["ho"].has_nonstandard_attr(HTTPONLY_ATTR)
    assert found["ho"].expires == int(RESPONSE_TIME + 60)
    assert not found["plain"].has_nonstandard_attr(HTTPONLY_ATTR)
    assert found["req"].domain == "www.example.com"


def test_empty_jar_loads(tmp_path: Path) -> None:
    """An empty jar is still a file MozillaCookieJar accepts."""
    path = tmp_path / "cookies.txt"
    path.write_text(netscape([]))
    loaded = MozillaCookieJar()
    loaded.load(str(path), ignore_discard=True, ignore_expires=True)
    assert len(loaded) == 0


def test_far_future_expiry_is_clamped() -> None:
    """An enormous Max-Age stays within what ISO 8601 and cookies.txt can show."""
    cookie = only(jar([setting("big=1; Max-Age=99999999999999")], []))
    assert cookie["expires"] == "9999-12-31T23:59:59.000Z"
    assert f"\t{int(cookies.MAX_EXPIRY)}\tbig\t" in netscape([cookie])
