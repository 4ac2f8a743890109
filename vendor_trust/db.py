"""The vendor_trust tables' migrations; the engine is the instance's shared one."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from storage.db import run_migrations

MIGRATIONS = Path(__file__).with_name("migrations")


def migrate(engine: Engine) -> None:
    run_migrations(engine, MIGRATIONS, "alembic_version_vendor_trust")
