"""The appliance's identity: a name kept in a file under var/, made on first start.

Flows record the appliance that captured them, so where several appliances
share one PostgreSQL store a tester can tell (and filter with ``~via``)
which one saw a device's traffic.  The name is the host name and a random
suffix, so two appliances on one host still differ; an operator may write
any other name into the file (one line, printable, no spaces) before the
next start.
"""

from __future__ import annotations

import os
import re
import secrets
import socket

MAX_LENGTH = 64
_VALID = re.compile(r"[A-Za-z0-9._:@-]{1,64}")


class IdentityError(Exception):
    """The identity file cannot be read or holds no usable name: one line for the operator."""


def appliance_identity(path: str) -> str:
    """The name in ``path``, which is created (mode 0600) with a new name when absent."""
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path)
    except OSError as e:
        raise IdentityError(f"cannot create the appliance identity file {path}: {e.strerror or e}") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(new_name() + "\n")
    return _read(path)


def new_name() -> str:
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname().split(".")[0])[: MAX_LENGTH - 7] or "appliance"
    return f"{host}-{secrets.token_hex(3)}"


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            name = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise IdentityError(f"cannot read the appliance identity file {path}: {e}") from None
    if not _VALID.fullmatch(name):
        raise IdentityError(
            f"the appliance identity file {path} must hold one name of 1 to {MAX_LENGTH} letters,"
            f" digits or . _ : @ - (found {name[:80]!r})"
        )
    return name
