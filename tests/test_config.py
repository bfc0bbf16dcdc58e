"""Tests for capture.config: INI text -> frozen, validated settings."""

import dataclasses
import ipaddress
import os
from pathlib import Path

import pytest

from capture.config import (
    SCHEMA,
    AdminSettings,
    ConfigError,
    ProxySettings,
    Settings,
    StoreSettings,
    TLSSettings,
    UpstreamProxy,
    load,
    parse,
)

SHIPPED = Path(__file__).parent.parent / "etc" / "capture.ini"


def sections(settings: Settings) -> tuple:
    """Everything but source, for comparing two loads."""
    return (settings.proxy, settings.tls, settings.store, settings.admin)


def test_empty_gives_defaults(tmp_path, monkeypatch):
    """An empty file is valid and every key takes its documented default."""
    monkeypatch.chdir(tmp_path)
    settings = parse("")
    assert settings.proxy == ProxySettings(
        listen="tcp:8080",
        allow=tuple(
            ipaddress.ip_network(n)
            for n in ("127.0.0.0/8", "::1", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
        ),
        max_capture_body=1048576,
        idle_timeout=60.0,
        upstream=None,
        no_upstream=(),
        workers=1,
        magic_host="capture.proxy",
    )
    assert settings.tls == TLSSettings(
        ca_dir=str(tmp_path / "var" / "ca"),
        verify_upstream=True,
        upstream_ca="",
        passthrough=(),
        auto_passthrough=True,
    )
    assert settings.store == StoreSettings(
        socket=str(tmp_path / "var" / "run" / "sessiond.sock"),
        database=str(tmp_path / "var" / "capture.sqlite"),
        appliance_file=str(tmp_path / "var" / "appliance"),
    )
    assert settings.admin == AdminSettings(
        listen="tcp:8081", token_file=str(tmp_path / "var" / "admin.token"), session_manager_wait=5.0
    )
    assert settings.source == "<string>"


def test_shipped_file_equals_defaults():
    """etc/capture.ini loads as is and sets exactly the defaults."""
    settings = load(str(SHIPPED))
    assert sections(settings) == sections(parse(""))
    assert settings.source == str(SHIPPED.resolve())


def test_shipped_file_lists_every_key():
    """The shipped file documents every key the schema knows, and no other."""
    import configparser

    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
    parser.read(SHIPPED)
    assert {s: set(parser[s]) for s in parser.sections()} == {
        s: set(keys) for s, keys in SCHEMA.items()
    }


def test_schema_matches_dataclasses():
    """Every schema row has a dataclass field and vice versa."""
    for section, cls in [
        ("proxy", ProxySettings),
        ("tls", TLSSettings),
        ("store", StoreSettings),
        ("admin", AdminSettings),
    ]:
        assert [f.name for f in dataclasses.fields(cls)] == list(SCHEMA[section])


def test_settings_are_frozen():
    """Settings cannot be changed after loading."""
    settings = parse("")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.proxy.workers = 2


def test_proxy_keys_parsed(tmp_path):
    """Each [proxy] key is converted to its type; comments and case are handled."""
    settings = parse(
        """
[proxy]
LISTEN = tcp:9090:interface=127.0.0.1   ; inline comment
allow = 10.1.0.0/16, 192.0.2.7
    2001:db8::/32
max_capture_body = 0
idle_timeout = 2.5
upstream = http://us%40er:p%3Ass@Proxy.Example:3128
no_upstream = *.Internal.example, localhost
workers = 64
magic_host = Capture.Local
"""
    )
    proxy = settings.proxy
    assert proxy.listen == "tcp:9090:interface=127.0.0.1"
    assert proxy.allow == (
        ipaddress.ip_network("10.1.0.0/16"),
        ipaddress.ip_network("192.0.2.7/32"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert proxy.max_capture_body == 0
    assert proxy.idle_timeout == 2.5
    assert proxy.upstream == UpstreamProxy("proxy.example", 3128, "us@er", "p:ss")
    assert proxy.no_upstream == ("*.internal.example", "localhost")
    assert proxy.workers == 64
    assert proxy.magic_host == "capture.local"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("http://proxy:8080", UpstreamProxy("proxy", 8080, None, None)),
        ("http://proxy:8080/", UpstreamProxy("proxy", 8080, None, None)),
        ("http://[::1]:3128", UpstreamProxy("::1", 3128, None, None)),
        ("http://user@proxy:1", UpstreamProxy("proxy", 1, "user", "")),
        ("", None),
    ],
)
def test_upstream_forms(value, expected):
    """Accepted upstream URLs: optional credentials, IPv6 literal, trailing slash."""
    assert parse(f"[proxy]\nupstream = {value}\n").proxy.upstream == expected


@pytest.mark.parametrize("listen", ["tcp:0", "tcp6:8080", "tcp:port=65535", "unix:/tmp/capture.sock"])
def test_endpoint_forms(listen):
    """Endpoint strings of each allowed type are accepted unchanged."""
    assert parse(f"[admin]\nlisten = {listen}\n").admin.listen == listen


@pytest.mark.parametrize(
    "value, expected",
    [("YES", True), ("on", True), ("1", True), ("True", True),
     ("no", False), ("OFF", False), ("0", False), ("false", False)],
)
def test_booleans(value, expected):
    """Booleans accept yes/no, true/false, on/off, 1/0 in any case."""
    settings = parse(f"[tls]\nverify_upstream = {value}\nauto_passthrough = {value}\n")
    assert settings.tls.verify_upstream is expected
    assert settings.tls.auto_passthrough is expected


def test_tls_store_admin_keys_parsed():
    """[tls], [store] and [admin] keys are converted; absolute paths are kept."""
    settings = parse(
        """
[tls]
ca_dir = /srv/ca
upstream_ca = /etc/ssl/bundle.pem
passthrough = *.Bank.example bank.example
[store]
socket = /run/s.sock
database = /data/c.sqlite
[admin]
listen = tcp6:9000
token_file = /etc/capture/token
"""
    )
    assert settings.tls.ca_dir == "/srv/ca"
    assert settings.tls.upstream_ca == "/etc/ssl/bundle.pem"
    assert settings.tls.passthrough == ("*.bank.example", "bank.example")
    assert settings.store == StoreSettings("/run/s.sock", "/data/c.sqlite", os.path.abspath("var/appliance"))
    assert settings.admin == AdminSettings("tcp6:9000", "/etc/capture/token", 5.0)


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    """Relative paths resolve against the working directory at load time."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.ini").write_text(
        "[tls]\nca_dir = ca\nupstream_ca = certs/bundle.pem\n"
        "[store]\nsocket = run/s.sock\ndatabase = ../db.sqlite\n"
        "[admin]\ntoken_file = ./token\n"
    )
    settings = load("c.ini")
    assert settings.source == str(tmp_path / "c.ini")
    assert settings.tls.ca_dir == str(tmp_path / "ca")
    assert settings.tls.upstream_ca == str(tmp_path / "certs" / "bundle.pem")
    assert settings.store.socket == str(tmp_path / "run" / "s.sock")
    assert settings.store.database == str(tmp_path.parent / "db.sqlite")
    assert settings.admin.token_file == str(tmp_path / "token")


def assert_one_line(error: ConfigError, *parts: str) -> None:
    message = str(error)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)


@pytest.mark.parametrize(
    "section, key, value, reason",
    [
        ("proxy", "listen", "tcp:notaport", "not a valid endpoint"),
        ("proxy", "listen", "nonsense:1", "unknown type 'nonsense'"),
        ("proxy", "listen", "tpc:8080", "unknown type 'tpc'"),
        ("proxy", "listen", "tcp:70000", "0-65535"),
        ("proxy", "listen", "tcp:-1", "0-65535"),
        ("proxy", "listen", "tcp:8080:bogus=1", "not a valid endpoint"),
        ("admin", "listen", "8081", "unknown type '8081'"),
        ("admin", "listen", "", "unknown type ''"),
        ("proxy", "allow", "10.0.0.0/33", "bad network"),
        ("proxy", "allow", "127.0.0.1 not-an-ip", "bad network: 'not-an-ip'"),
        ("proxy", "allow", "10.0.0.1/8", "did you mean '10.0.0.0/8'?"),
        ("proxy", "allow", "", "no networks"),
        ("proxy", "max_capture_body", "1MB", "not an integer"),
        ("proxy", "max_capture_body", "-1", "0 or more"),
        ("proxy", "idle_timeout", "soon", "not a number"),
        ("proxy", "idle_timeout", "0", "greater than 0"),
        ("proxy", "idle_timeout", "nan", "out of range"),
        ("proxy", "workers", "two", "not an integer"),
        ("proxy", "workers", "0", "1 to 64"),
        ("proxy", "workers", "65", "1 to 64"),
        ("proxy", "upstream", "https://proxy:3128", "scheme must be http"),
        ("proxy", "upstream", "http://proxy", "no port"),
        ("proxy", "upstream", "http://proxy:3128/path", "path"),
        ("proxy", "upstream", "http://proxy:0", "1-65535"),
        ("proxy", "upstream", "http://proxy:99999", "http://"),
        ("proxy", "upstream", "http://proxy:port", "http://"),
        ("proxy", "upstream", "proxy:3128", "scheme must be http"),
        ("proxy", "no_upstream", "http://intranet", "bad host pattern"),
        ("proxy", "magic_host", "http://capture.proxy", "not a host name"),
        ("proxy", "magic_host", "capture proxy", "not a host name"),
        ("tls", "verify_upstream", "maybe", "not a boolean"),
        ("tls", "auto_passthrough", "", "not a boolean"),
        ("tls", "passthrough", "10.0.0.0/8", "bad host pattern"),
        ("tls", "ca_dir", "", "empty"),
        ("store", "socket", "", "empty"),
    ],
)
def test_bad_values(section, key, value, reason):
    """A bad value raises one ConfigError line naming section, key, value and why."""
    with pytest.raises(ConfigError) as info:
        parse(f"[{section}]\n{key} = {value}\n")
    assert_one_line(info.value, f"[{section}] {key} = {value!r}: ", reason)


def test_multiline_value_error_is_one_line():
    """A bad value spread over continuation lines is still reported on one line."""
    with pytest.raises(ConfigError) as info:
        parse("[proxy]\nlisten = tcp:8080\n  tcp:8081\n")
    assert_one_line(info.value, "[proxy] listen = 'tcp:8080\\ntcp:8081'")


def test_missing_file(tmp_path):
    """A missing file is one line naming the absolute path and the OS reason."""
    path = tmp_path / "nope.ini"
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert str(info.value) == (
        f"cannot read config file '{path}': No such file or directory"
    )


def test_unreadable_file(tmp_path):
    """A directory or non-UTF-8 file is reported, not raised as another error."""
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path))
    assert_one_line(info.value, "cannot read config file", str(tmp_path))
    bad = tmp_path / "latin1.ini"
    bad.write_bytes(b"[proxy]\nmagic_host = caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load(str(bad))
    assert_one_line(info.value, "cannot read config file", "not UTF-8")


def test_unknown_section():
    """An unknown section is named, with a suggestion when one is close."""
    with pytest.raises(ConfigError) as info:
        parse("[foo]\nx = 1\n")
    assert str(info.value) == "unknown section [foo]"
    with pytest.raises(ConfigError) as info:
        parse("[Proxy]\nlisten = tcp:1\n")
    assert str(info.value) == "unknown section [Proxy] (did you mean 'proxy'?)"


def test_default_section_rejected():
    """[DEFAULT] is refused rather than silently copied into every section."""
    with pytest.raises(ConfigError) as info:
        parse("[DEFAULT]\nlisten = tcp:1\n")
    assert str(info.value) == "unknown section [DEFAULT]"


def test_unknown_key_with_suggestion():
    """An unknown key is named, with the closest known key suggested."""
    with pytest.raises(ConfigError) as info:
        parse("[proxy]\nlissten = tcp:8080\n")
    assert str(info.value) == "[proxy] unknown key 'lissten' (did you mean 'listen'?)"
    with pytest.raises(ConfigError) as info:
        parse("[store]\nzzz = 1\n")
    assert str(info.value) == "[store] unknown key 'zzz'"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("listen = tcp:1\n", "c.ini, line 1: 'listen = tcp:1' comes before any [section] header"),
        ("[proxy]\nworkers = 1\nworkers = 2\n", "c.ini, line 3: [proxy] key 'workers' appears twice"),
        ("[proxy]\n[tls]\n[proxy]\n", "c.ini, line 3: section [proxy] appears twice"),
        ("[proxy]\njust words\n", "c.ini, line 2: cannot parse 'just words'"),
    ],
)
def test_syntax_errors(text, expected):
    """INI syntax errors are one line naming the source and line."""
    with pytest.raises(ConfigError) as info:
        parse(text, "c.ini")
    assert_one_line(info.value, expected)


def test_error_does_not_chain():
    """ConfigError carries no chained traceback for start-up to print."""
    with pytest.raises(ConfigError) as info:
        parse("[proxy]\nworkers = x\n")
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_parse_source_name(tmp_path):
    """load() records the absolute path; parse() records its source argument."""
    assert parse("", "memory").source == "memory"
    path = tmp_path / "c.ini"
    path.write_text("")
    assert load(str(path)).source == os.path.abspath(path)


@pytest.mark.parametrize(
    "value, selects",
    [
        ("postgresql://capture:secret@db.lab:5432/capture", "postgresql://capture:secret@db.lab:5432/capture"),
        ("postgres://capture@/capture?host=/var/run/postgresql", "postgres://capture@/capture?host=/var/run/postgresql"),
        ("/data/capture.sqlite", "/data/capture.sqlite"),
    ],
)
def test_store_database_url_or_path(value, selects):
    """[store] database takes a libpq URL (kept as written) or a SQLite path (made absolute)."""
    assert parse(f"[store]\ndatabase = {value}\n").store.database == selects


@pytest.mark.parametrize(
    "value, message",
    [
        ("mysql://db/capture", "neither a path nor a PostgreSQL URL"),
        ("postgresql:/capture", "neither a path nor a PostgreSQL URL"),
        ("postgresql://db.lab:99999/capture", "port 99999 is not in 1-65535"),
        ("postgresql://db.lab/", "names no database"),
        ("postgresql://u@[::1/capture", "not a valid PostgreSQL URL"),
    ],
)
def test_store_database_bad_url_is_one_line(value, message):
    """Anything but a path or a valid postgresql:// URL stops start-up with one line naming [store] database."""
    with pytest.raises(ConfigError) as info:
        parse(f"[store]\ndatabase = {value}\n")
    text = str(info.value)
    assert text.startswith(f"[store] database = {value!r}: ") and message in text
    assert "\n" not in text
