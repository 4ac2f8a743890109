"""The database plumbing every package shares: one engine per process,
per-package Alembic histories, the store's errors and small value helpers."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError


class StoreError(Exception):
    """The database cannot be reached or refused the operation."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass


def utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def now() -> datetime:
    return datetime.now(timezone.utc)


def serial_hex(serial: int) -> str:
    return format(serial, "x")


def parse_serial(text: str) -> int:
    """Accept 'ABCD', '0xabcd', 'ab:cd' and 'AB CD'; refuse anything else."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "").replace(" ", "")
    if not cleaned or len(cleaned) > 42 or any(c not in "0123456789abcdef" for c in cleaned):
        raise ValueError(f"not a hexadecimal serial number: {text!r}")
    return int(cleaned, 16)


def sqlite_url_for(path: Path) -> str:
    return f"sqlite:///{path}"


def make_engine(url: str, *, sqlite_synchronous: str = "FULL") -> Engine:
    """One engine per process for every package's tables (ca, vendor_trust, ra)."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=4)
    sync = sqlite_synchronous.upper()
    if sync not in ("FULL", "NORMAL", "EXTRA"):
        raise StoreError("sqlite synchronous must be FULL, NORMAL or EXTRA")
    # Pooled per process; Store.after_fork() drops what a parent left behind.
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={sync}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def run_migrations(engine: Engine, script_location: Path, version_table: str) -> None:
    """Upgrade one package's tables to head; each package keeps its own history."""
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["version_table"] = version_table
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except OperationalError as exc:
        raise StoreError(f"cannot open the database: {exc.orig}") from None
