"""The throwaway PostgreSQL cluster that the database tests run on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from pgcluster import PostgresCluster, PostgresUnavailable, find_pg_bindir


def _scalar(url: str, query: str) -> object:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(query)).scalar_one()
    finally:
        engine.dispose()


def test_sqlalchemy_create_insert_select(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+psycopg://")
    assert postgres_url.endswith("/ztpki_test")
    engine = sa.create_engine(postgres_url)
    meta = sa.MetaData()
    items = sa.Table(
        "pgcluster_items",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("blob", sa.LargeBinary),
    )
    try:
        meta.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                items.insert(),
                [{"name": "alpha", "blob": b"\x00\x01"}, {"name": "bäta", "blob": None}],
            )
        with engine.connect() as conn:
            rows = conn.execute(sa.select(items.c.name, items.c.blob).order_by(items.c.id)).all()
        assert [tuple(r) for r in rows] == [("alpha", b"\x00\x01"), ("bäta", None)]
    finally:
        meta.drop_all(engine)
        engine.dispose()


def test_server_is_postgresql(postgres_url: str) -> None:
    version = _scalar(postgres_url, "SELECT version()")
    assert isinstance(version, str) and version.startswith("PostgreSQL "), version
    assert _scalar(postgres_url, "SELECT current_database()") == "ztpki_test"
    # Realistic durability: the test server does not skip fsync.
    assert _scalar(postgres_url, "SHOW fsync") == "on"
    assert _scalar(postgres_url, "SHOW listen_addresses") == "127.0.0.1"


def test_per_test_databases_are_isolated(
    postgres_db_url: str, make_postgres_db: Callable[[], str]
) -> None:
    other_url = make_postgres_db()
    assert other_url != postgres_db_url

    first = sa.create_engine(postgres_db_url)
    second = sa.create_engine(other_url)
    try:
        with first.begin() as conn:
            conn.execute(sa.text("CREATE TABLE only_here (v int)"))
            conn.execute(sa.text("INSERT INTO only_here VALUES (42)"))
        with second.begin() as conn:
            conn.execute(sa.text("CREATE TABLE only_there (v int)"))

        assert sa.inspect(first).get_table_names() == ["only_here"]
        assert sa.inspect(second).get_table_names() == ["only_there"]
        with first.connect() as conn:
            assert conn.execute(sa.text("SELECT v FROM only_here")).scalar_one() == 42
        with second.connect() as conn:
            with pytest.raises(sa.exc.ProgrammingError):
                conn.execute(sa.text("SELECT v FROM only_here"))
    finally:
        first.dispose()
        second.dispose()


def test_drop_database_ends_open_connections(postgres_cluster: PostgresCluster) -> None:
    url = postgres_cluster.create_database("pgcluster_dropme")
    assert url.endswith("/pgcluster_dropme")
    leftover = psycopg.connect(postgres_cluster.dsn("pgcluster_dropme"))
    try:
        leftover.execute("SELECT 1")
        postgres_cluster.drop_database("pgcluster_dropme")
        with psycopg.connect(postgres_cluster.dsn()) as conn:
            names = [r[0] for r in conn.execute("SELECT datname FROM pg_database")]
        assert "pgcluster_dropme" not in names
        # Dropping again is harmless.
        postgres_cluster.drop_database("pgcluster_dropme")
    finally:
        leftover.close()


def test_cluster_runs_in_its_own_directory(postgres_cluster: PostgresCluster) -> None:
    assert postgres_cluster.base_dir is not None
    assert (postgres_cluster.data_dir / "PG_VERSION").is_file()
    with psycopg.connect(postgres_cluster.dsn()) as conn:
        sockdir = conn.execute("SHOW unix_socket_directories").fetchone()
    assert sockdir == (str(postgres_cluster.base_dir),)


def test_stop_removes_everything(postgres_cluster: PostgresCluster) -> None:
    # A second cluster next to the session one (whose fixture also decides
    # between fail and skip when PostgreSQL is missing).
    cluster = PostgresCluster().start()
    assert cluster.port != postgres_cluster.port
    base = cluster.base_dir
    assert base is not None and base.is_dir()
    assert _scalar(cluster.url(), "SELECT 1") == 1
    port = cluster.port
    cluster.stop()
    assert not base.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=3")
    cluster.stop()  # idempotent


def test_find_pg_bindir_picks_highest_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZTPKI_PG_BINDIR", raising=False)
    for version in ("9.6", "15", "16", "100-not-a-server"):
        (tmp_path / version / "bin").mkdir(parents=True)
    for version in ("9.6", "15", "16"):
        (tmp_path / version / "bin" / "initdb").touch()
    assert find_pg_bindir(str(tmp_path / "*" / "bin")) == tmp_path / "16" / "bin"


def test_missing_binaries_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZTPKI_PG_BINDIR", str(tmp_path))  # holds no initdb
    assert find_pg_bindir() is None
    with pytest.raises(PostgresUnavailable, match="deploy/setup.sh"):
        PostgresCluster().start()
