"""Read the INI config file once into frozen, validated settings.

Every bad input becomes a single-line ConfigError that names the section, key
and value, so start-up can print it and exit without a traceback.  Parsing is
driven by the SCHEMA table: adding a key is one row there plus one field in its
section's dataclass.  The meaning of each key is documented in etc/capture.ini.
"""

from __future__ import annotations

import configparser
import difflib
import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A bad config file, as one line for the operator, e.g.
    "[proxy] listen = 'tcp:abc': not a valid endpoint (...)"."""


@dataclass(frozen=True)
class UpstreamProxy:
    """An HTTP proxy to chain to.  username and password are both None or both
    set (a user name with no password gives password "")."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class SystemProxy:
    """``upstream = system``: chain as the environment's http_proxy/https_proxy/no_proxy say."""


@dataclass(frozen=True)
class ProxySettings:
    listen: str
    allow: tuple[IPNetwork, ...]
    max_capture_body: int
    idle_timeout: float
    upstream: UpstreamProxy | SystemProxy | None
    no_upstream: tuple[str, ...]
    workers: int
    magic_host: str


@dataclass(frozen=True)
class TLSSettings:
    ca_dir: str
    verify_upstream: bool
    upstream_ca: str
    passthrough: tuple[str, ...]
    auto_passthrough: bool


@dataclass(frozen=True)
class StoreSettings:
    socket: str
    database: str
    appliance_file: str


@dataclass(frozen=True)
class AdminSettings:
    listen: str
    token_file: str
    session_manager_wait: float


@dataclass(frozen=True)
class LimitSettings:
    max_request_line: int
    max_header_bytes: int
    max_headers: int
    header_timeout: float
    body_timeout: float
    max_connections: int
    connect_timeout: float
    shutdown_grace: float
    max_websocket_message: int


@dataclass(frozen=True)
class CaptureSettings:
    buffer_memory: int
    spill_file: str
    spill_limit: int
    redact: tuple[str, ...]


@dataclass(frozen=True)
class Settings:
    proxy: ProxySettings
    tls: TLSSettings
    store: StoreSettings
    admin: AdminSettings
    limits: LimitSettings
    capture: CaptureSettings
    source: str  # absolute path of the file read, or parse()'s source


# Converters take the raw string and return the typed value, or raise
# ValueError whose message is the reason shown after "[section] key = 'value': ".
Converter = Callable[[str], Any]

_ENDPOINT_TYPES = ("tcp", "tcp6", "ssl", "unix")


def _endpoint(value: str) -> str:
    """A Twisted server endpoint string, checked by Twisted's own parser."""
    parts = _split_endpoint(value)
    kind = parts[0]
    if kind not in _ENDPOINT_TYPES:
        raise ValueError(
            f"not a valid endpoint (unknown type {kind!r}; "
            f"allowed: {', '.join(_ENDPOINT_TYPES)})"
        )
    # Imported here so importing this module never installs a reactor.
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(reactor, value)  # parses only; nothing listens
    except Exception as e:
        raise ValueError(f"not a valid endpoint ({_one_line(e)})") from None
    if kind != "unix":
        # Twisted accepted it, so the port (positional or port=) is an int.
        positional = [p for p in parts[1:] if "=" not in p]
        named = [p.partition("=")[2] for p in parts[1:] if p.startswith("port=")]
        port = int((named or positional)[0])
        if not 0 <= port <= 65535:
            raise ValueError(f"not a valid endpoint (port {port} is not in 0-65535)")
    return value


def _split_endpoint(value: str) -> list[str]:
    """Split on the colons Twisted splits on (a backslash escapes the next char)."""
    parts, current, escaped = [], [], False
    for char in value:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _integer(low: int, high: int | None = None) -> Converter:
    allowed = f"{low} to {high}" if high is not None else f"{low} or more"

    def convert(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"not an integer (allowed: {allowed})") from None
        if number < low or (high is not None and number > high):
            raise ValueError(f"out of range (allowed: {allowed})")
        return number

    return convert


def _seconds(value: str) -> float:
    """A positive, finite number of seconds."""
    allowed = "a number of seconds greater than 0"
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"not a number (allowed: {allowed})") from None
    if not 0 < number < float("inf"):  # also rejects nan
        raise ValueError(f"out of range (allowed: {allowed})")
    return number


_BOOLEANS = {
    "yes": True, "true": True, "on": True, "1": True,
    "no": False, "false": False, "off": False, "0": False,
}


def _boolean(value: str) -> bool:
    try:
        return _BOOLEANS[value.lower()]
    except KeyError:
        raise ValueError(
            "not a boolean (allowed: yes/no, true/false, on/off, 1/0)"
        ) from None


def _split_list(value: str) -> list[str]:
    """Items separated by whitespace and/or commas (continuation lines too)."""
    return [item for item in re.split(r"[\s,]+", value) if item]


def _networks(value: str) -> tuple[IPNetwork, ...]:
    networks = []
    for item in _split_list(value):
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError as e:
            hint = ""
            try:  # accepted when lax: the only fault is host bits set
                hint = f" (did you mean '{ipaddress.ip_network(item, strict=False)}'?)"
            except ValueError:
                pass
            raise ValueError(f"bad network: {e}{hint}") from None
    if not networks:
        # An empty list would refuse every client: surely a mistake.
        raise ValueError("no networks given (to allow every client: 0.0.0.0/0 ::/0)")
    return tuple(networks)


def _host_globs(value: str) -> tuple[str, ...]:
    globs = tuple(item.lower() for item in _split_list(value))
    for glob in globs:
        if "/" in glob:
            raise ValueError(
                f"bad host pattern {glob!r} (allowed: host names, * and ?; "
                "no scheme, path or CIDR)"
            )
    return globs


_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")


def _header_names(value: str) -> tuple[str, ...]:
    """HTTP header names (tokens), lowercased, e.g. 'Authorization, Cookie'."""
    names = tuple(name.lower() for name in _split_list(value))
    for name in names:
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise ValueError(f"{name!r} is not a header name")
    return names


def _host_name(value: str) -> str:
    name = value.lower()
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError(
            "not a host name (allowed: letters, digits, '-' and '.'; "
            "no scheme, port or spaces)"
        )
    return name


_UPSTREAM_FORM = "expected empty, system, or http://[user:password@]host:port"


def _upstream(value: str) -> UpstreamProxy | SystemProxy | None:
    if not value:
        return None
    if value.lower() == "system":
        return SystemProxy()
    if any(char.isspace() for char in value):
        raise ValueError(f"contains spaces ({_UPSTREAM_FORM})")
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError as e:
        raise ValueError(f"{_one_line(e)} ({_UPSTREAM_FORM})") from None
    if url.scheme != "http":
        raise ValueError(f"scheme must be http ({_UPSTREAM_FORM})")
    if not url.hostname:
        raise ValueError(f"no host ({_UPSTREAM_FORM})")
    if port is None:
        raise ValueError(f"no port ({_UPSTREAM_FORM})")
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not in 1-65535 ({_UPSTREAM_FORM})")
    if url.path not in ("", "/") or url.query or url.fragment:
        raise ValueError(f"has a path, query or fragment ({_UPSTREAM_FORM})")
    username = password = None
    if url.username is not None:
        username = unquote(url.username)
        password = unquote(url.password or "")
    return UpstreamProxy(url.hostname, port, username, password)


def _path(value: str) -> str:
    """A required path, made absolute now so children and logs see it whole."""
    if not value:
        raise ValueError("empty (allowed: a file or directory path)")
    return os.path.abspath(value)


def _optional_path(value: str) -> str:
    return os.path.abspath(value) if value else ""


_DATABASE_FORM = "a file path for SQLite, or postgresql://user[:password]@host[:port]/dbname"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def is_postgresql_url(database: str) -> bool:
    """Does ``[store] database`` (as validated) select PostgreSQL rather than a SQLite file?"""
    return database.startswith(("postgresql://", "postgres://"))


def _database(value: str) -> str:
    """A SQLite path (made absolute), or a libpq URL checked by libpq's own parser.

    Anything else that looks like a URL is refused, so a typo in the scheme
    never becomes a SQLite file named after it.
    """
    if is_postgresql_url(value):
        try:
            from psycopg.conninfo import conninfo_to_dict
            from psycopg import Error as PsycopgError
        except ImportError:
            raise ValueError("PostgreSQL needs psycopg: pip install '.[postgres]'") from None
        try:
            params = conninfo_to_dict(value)
        except PsycopgError as e:
            detail = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise ValueError(f"not a valid PostgreSQL URL: {detail} ({_DATABASE_FORM})") from None
        port = params.get("port")
        if port is not None and not (str(port).isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(f"port {port} is not in 1-65535 ({_DATABASE_FORM})")
        if not params.get("dbname"):
            raise ValueError(f"names no database ({_DATABASE_FORM})")
        return value
    if _SCHEME.match(value):
        raise ValueError(f"neither a path nor a PostgreSQL URL ({_DATABASE_FORM})")
    if not value:
        raise ValueError(f"empty ({_DATABASE_FORM})")
    return os.path.abspath(value)


# section -> key -> (converter, default as written in the file)
SCHEMA: dict[str, dict[str, tuple[Converter, str]]] = {
    "proxy": {
        "listen": (_endpoint, "tcp:8080"),
        "allow": (_networks, "127.0.0.0/8 ::1 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16"),
        "max_capture_body": (_integer(0), "1048576"),
        "idle_timeout": (_seconds, "60"),
        "upstream": (_upstream, ""),
        "no_upstream": (_host_globs, ""),
        "workers": (_integer(1, 64), "1"),
        "magic_host": (_host_name, "capture.proxy"),
    },
    "tls": {
        "ca_dir": (_path, "var/ca"),
        "verify_upstream": (_boolean, "yes"),
        "upstream_ca": (_optional_path, ""),
        "passthrough": (_host_globs, ""),
        "auto_passthrough": (_boolean, "yes"),
    },
    "store": {
        "socket": (_path, "var/run/sessiond.sock"),
        "database": (_database, "var/capture.sqlite"),
        "appliance_file": (_path, "var/appliance"),
    },
    "admin": {
        "listen": (_endpoint, "tcp:8081"),
        "token_file": (_path, "var/admin.token"),
        "session_manager_wait": (_seconds, "5"),
    },
    "limits": {
        "max_request_line": (_integer(64, 1048576), "8192"),
        "max_header_bytes": (_integer(1024, 16777216), "65536"),
        "max_headers": (_integer(1, 10000), "100"),
        "header_timeout": (_seconds, "30"),
        "body_timeout": (_seconds, "60"),
        "max_connections": (_integer(1, 1000000), "4096"),
        "connect_timeout": (_seconds, "10"),
        "shutdown_grace": (_seconds, "10"),
        "max_websocket_message": (_integer(1024, 1 << 40), "67108864"),
    },
    "capture": {
        "buffer_memory": (_integer(0), "67108864"),
        "spill_file": (_path, "var/spill.msgpack"),
        "spill_limit": (_integer(0), "1073741824"),
        "redact": (_header_names, ""),
    },
}

_SECTION_TYPES: dict[str, type] = {
    "proxy": ProxySettings,
    "tls": TLSSettings,
    "store": StoreSettings,
    "admin": AdminSettings,
    "limits": LimitSettings,
    "capture": CaptureSettings,
}


def load(path: str) -> Settings:
    """Read and validate the config file at path; raises only ConfigError."""
    source = os.path.abspath(path)
    try:
        # utf-8-sig: tolerate the BOM some Windows editors write.
        with open(source, encoding="utf-8-sig") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {source!r}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"cannot read config file {source!r}: not UTF-8 text (byte {e.start})"
        ) from None
    except ValueError as e:  # e.g. a NUL byte in the path
        raise ConfigError(f"cannot read config file {source!r}: {e}") from None
    return parse(text, source)


def parse(text: str, source: str = "<string>") -> Settings:
    """Validate INI text (source names it in messages); raises only ConfigError."""
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=(";", "#")
    )
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        raise ConfigError(_syntax_message(e, text, source)) from None
    # configparser copies [DEFAULT] keys into every section; we have no use for it.
    if parser.defaults():
        raise ConfigError(f"unknown section [{parser.default_section}]")
    for section in parser.sections():
        if section not in SCHEMA:
            raise ConfigError(f"unknown section [{section}]{_suggest(section, SCHEMA)}")

    sections = {}
    for section, keys in SCHEMA.items():
        if parser.has_section(section):
            for key in parser[section]:
                if key not in keys:
                    raise ConfigError(
                        f"[{section}] unknown key {key!r}{_suggest(key, keys)}"
                    )
        values = {}
        for key, (convert, default) in keys.items():
            raw = parser.get(section, key, fallback=default)
            try:
                values[key] = convert(raw)
            except ValueError as e:
                raise ConfigError(f"[{section}] {key} = {raw!r}: {e}") from None
        sections[section] = _SECTION_TYPES[section](**values)
    return Settings(**sections, source=source)


def _suggest(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _syntax_message(error: configparser.Error, text: str, source: str) -> str:
    """configparser's messages span lines; say the same in one."""

    def line(number: int) -> str:
        lines = text.splitlines()
        return lines[number - 1].strip() if 0 < number <= len(lines) else ""

    if isinstance(error, configparser.MissingSectionHeaderError):
        return (
            f"{source}, line {error.lineno}: {line(error.lineno)!r} "
            "comes before any [section] header"
        )
    if isinstance(error, configparser.ParsingError):
        number = error.errors[0][0]
        return (
            f"{source}, line {number}: cannot parse {line(number)!r} "
            "(expected 'key = value' or '[section]')"
        )
    if isinstance(error, configparser.DuplicateSectionError):
        return f"{source}, line {error.lineno}: section [{error.section}] appears twice"
    if isinstance(error, configparser.DuplicateOptionError):
        return (
            f"{source}, line {error.lineno}: [{error.section}] "
            f"key {error.option!r} appears twice"
        )
    return f"{source}: {_one_line(error)}"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
