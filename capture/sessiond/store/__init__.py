"""The session manager's store: one interface, a backend chosen by ``[store] database``.

:mod:`.interface` declares what a store does; :mod:`.sqlite` is the
embedded backend.  Callers open a store with :func:`open_store` and use only
the interface.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from capture.config import is_postgresql_url

from capture.sessiond.store.interface import (
    MAX_NAME,
    MAX_PAGE,
    Conflict,
    Invalid,
    NotFound,
    Store,
    StoreError,
    Unavailable,
)
from capture.sessiond.store.sqlite import SQLiteStore

__all__ = ["MAX_NAME", "MAX_PAGE", "Conflict", "Invalid", "NotFound", "Store", "SQLiteStore", "StoreError", "Unavailable", "open_store"]


def open_store(
    database: str,
    clock: Callable[[], float] = time.time,
    pace: Callable[[], None] | None = None,
    appliance: str = "",
) -> Store:
    """The store ``database`` names (as ``[store] database`` validated it).

    A postgresql:// URL opens the shared PostgreSQL backend (psycopg is
    imported only then); anything else is a SQLite file.  ``appliance`` is
    stamped on every flow ingested through this store.  ``pace`` is called
    between small pieces of ingest work (:mod:`capture.sessiond.pacing`).
    """
    if is_postgresql_url(database):
        from capture.sessiond.store.postgres import PostgresStore

        return PostgresStore(database, clock=clock, appliance=appliance, pace=pace)
    return SQLiteStore(database, clock=clock, pace=pace, appliance=appliance)
