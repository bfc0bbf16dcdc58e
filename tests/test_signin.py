"""Web UI sign-ins, sans-I/O: the cookie's value and flags, expiry and revocation, the Origin check."""

from __future__ import annotations

from capture.admin import signin
from capture.admin.signin import IDLE, LIFETIME, MAX_SIGNINS, SignIns


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_right_token_gives_a_random_id_that_is_not_the_token():
    """A sign-in id is random, long, different each time and unrelated to the token; a wrong token gets none."""
    sign_ins = SignIns("secret-token", Clock())
    first, second = sign_ins.sign_in(b"secret-token"), sign_ins.sign_in(b"secret-token")
    assert first and second and first != second
    assert len(first) >= 40 and "secret" not in first
    assert sign_ins.valid(first) and sign_ins.valid(second)
    assert sign_ins.sign_in(b"wrong") is None and sign_ins.sign_in(b"") is None
    assert not sign_ins.valid("made-up") and not sign_ins.valid(None)


def test_sign_ins_expire_idle_and_old_and_end_on_sign_out():
    """Idle for IDLE seconds or older than LIFETIME, a sign-in is gone; sign-out ends it at once."""
    clock = Clock()
    sign_ins = SignIns("t", clock)
    idle = sign_ins.sign_in(b"t")
    busy = sign_ins.sign_in(b"t")
    for _ in range(int(LIFETIME // (IDLE / 2)) - 1):  # keep "busy" in use until just before its lifetime ends
        clock.now += IDLE / 2
        assert sign_ins.valid(busy)
    assert not sign_ins.valid(idle)
    clock.now += IDLE / 2 + 1
    assert not sign_ins.valid(busy)  # used all along, yet past its lifetime
    gone = sign_ins.sign_in(b"t")
    sign_ins.sign_out(gone)
    assert not sign_ins.valid(gone)


def test_sign_ins_are_bounded():
    """Past MAX_SIGNINS live sign-ins, the oldest is dropped rather than memory growing."""
    sign_ins = SignIns("t", Clock())
    first = sign_ins.sign_in(b"t")
    for _ in range(MAX_SIGNINS):
        last = sign_ins.sign_in(b"t")
    assert not sign_ins.valid(first) and sign_ins.valid(last)


def test_cookie_header_flags_and_parsing():
    """The cookie is HttpOnly, SameSite=Strict, host-only (no Domain), Secure only over TLS; it is found among others."""
    header = signin.set_cookie("abc", secure=False).decode()
    assert header.startswith("capture_ui=abc;")
    for flag in ("HttpOnly", "SameSite=Strict", "Path=/", f"Max-Age={int(LIFETIME)}"):
        assert flag in header
    assert "Domain" not in header and "Secure" not in header
    assert "; Secure" in signin.set_cookie("abc", secure=True).decode()
    assert "Max-Age=0" in signin.clear_cookie(False).decode()
    assert signin.cookie_value(b"a=1; capture_ui=xyz; b=2") == "xyz"
    assert signin.cookie_value(b"capture_uix=1; capture_ui=") is None
    assert signin.cookie_value(None) is None


def test_cookie_requests_need_this_listeners_origin_to_change_anything():
    """With the cookie, a POST or DELETE needs Origin == scheme://Host; reads need no Origin, but a browser's
    cross-origin or same-site mark refuses them too."""
    allowed = signin.cookie_request_allowed
    host = b"127.0.0.1:8081"
    assert allowed(b"POST", b"http://127.0.0.1:8081", b"same-origin", host, False)
    assert allowed(b"DELETE", b"HTTP://127.0.0.1:8081", None, host, False)
    assert not allowed(b"POST", b"http://127.0.0.1:9999", b"same-site", host, False)  # another port of the same host
    assert not allowed(b"POST", b"http://127.0.0.1:9999", None, host, False)
    assert not allowed(b"POST", None, None, host, False)
    assert not allowed(b"POST", b"null", None, host, False)
    assert not allowed(b"POST", b"http://127.0.0.1:8081", None, host, True)  # https listener, http origin
    assert not allowed(b"PATCH", b"http://127.0.0.1:8081", None, None, False)
    assert allowed(b"GET", None, None, host, False)
    assert allowed(b"GET", None, b"none", host, False)  # typed into the address bar
    assert not allowed(b"GET", None, b"same-site", host, False)
    assert not allowed(b"GET", None, b"cross-site", host, False)
