"""A throwaway PostgreSQL cluster for tests and benchmarks.

    with PostgresCluster() as pg:
        pg.create_database("ztpki_test")
        engine = sqlalchemy.create_engine(pg.url("ztpki_test"))

The cluster lives in its own temporary directory, listens on a free TCP port
on 127.0.0.1 (its Unix socket stays inside the temporary directory), trusts
every local connection and is removed again by stop().  PostgreSQL refuses to
run as root, so when we are root the directory is handed to the ``postgres``
user and initdb / pg_ctl run through ``runuser`` (or ``su``).

Needs only the standard library and psycopg, so bench/ can use it too:
``sys.path.insert(0, "<repo>/tests"); from pgcluster import PostgresCluster``.
Run ``python tests/pgcluster.py`` to get a cluster on the terminal until Ctrl-C.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Iterator, Mapping, Sequence
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

__all__ = ["PostgresCluster", "PostgresUnavailable", "PostgresStartError", "find_pg_bindir"]

SETUP_HINT = "run `bash deploy/setup.sh` (installs the postgresql package)"
PG_SEARCH_GLOB = "/usr/lib/postgresql/*/bin"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries (or the postgres user) are missing."""


class PostgresStartError(RuntimeError):
    """The server was found but did not come up."""


def _version_key(bindir: str) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,), .../9.6/bin -> (9, 6)
    version = Path(bindir).parent.name
    return tuple(int(n) for n in re.findall(r"\d+", version)) or (0,)


def find_pg_bindir(search_glob: str = PG_SEARCH_GLOB) -> Path | None:
    """The directory holding initdb and pg_ctl, or None.

    $ZTPKI_PG_BINDIR wins; then the highest version in /usr/lib/postgresql
    (Debian's layout); then whatever initdb is on PATH.
    """
    override = os.environ.get("ZTPKI_PG_BINDIR")
    if override:
        return Path(override) if (Path(override) / "initdb").is_file() else None
    candidates = [d for d in glob.glob(search_glob) if os.path.isfile(os.path.join(d, "initdb"))]
    if candidates:
        return Path(max(candidates, key=_version_key))
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """One private PostgreSQL server: start(), url(db), create_database(),
    drop_database(), stop()."""

    def __init__(
        self,
        *,
        settings: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
        bindir: Path | str | None = None,
    ) -> None:
        # Extra postgresql.conf settings, e.g. {"synchronous_commit": "off"}.
        self.settings = dict(settings or {})
        self.start_timeout = start_timeout
        self._bindir = Path(bindir) if bindir else None
        self.user = "postgres"  # the superuser role initdb creates
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.base_dir: Path | None = None
        self._run_as: list[str] = []
        self._running = False

    # -- paths --------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        assert self.base_dir is not None, "cluster not started"
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        assert self.base_dir is not None, "cluster not started"
        return self.base_dir / "server.log"

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            found = find_pg_bindir()
            if found is None:
                raise PostgresUnavailable(
                    f"PostgreSQL server binaries (initdb, pg_ctl) not found in "
                    f"{PG_SEARCH_GLOB} or on PATH: {SETUP_HINT}"
                )
            self._bindir = found
        return self._bindir

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> "PostgresCluster":
        if self._running:
            return self
        bindir = self.bindir
        self.base_dir = Path(tempfile.mkdtemp(prefix="ztpki-pg-"))
        # A server left behind would outlive us: stop it at interpreter exit
        # too, in case the owner never gets to call stop().
        atexit.register(self.stop)
        try:
            self._prepare_owner()
            self._pg(
                bindir / "initdb",
                "-D", str(self.data_dir),
                "-U", self.user,
                "-A", "trust",
                "-E", "UTF8",
                "--locale=C",
                "--no-sync",  # only initdb's final flush; the server runs with fsync=on
                what="initdb",
            )
            self._start_server(bindir)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (if one runs) and remove the cluster's directory."""
        if self.base_dir is not None and (self.data_dir / "postmaster.pid").exists():
            for mode in ("fast", "immediate"):
                try:
                    self._pg(
                        self.bindir / "pg_ctl", "stop", "-D", str(self.data_dir),
                        "-m", mode, "-w", "-t", "30", what="pg_ctl stop",
                    )
                    break
                except PostgresStartError:
                    continue
            self._running = False
        self._cleanup_dir()
        atexit.unregister(self.stop)

    def __enter__(self) -> "PostgresCluster":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- connection strings and databases ----------------------------------
    def url(self, db: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver) for database *db*."""
        assert self.port is not None, "cluster not started"
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{quote(db, safe='')}"

    def dsn(self, db: str = "postgres") -> str:
        """libpq connection string for psycopg.connect()."""
        assert self.port is not None, "cluster not started"
        return make_conninfo(host=self.host, port=self.port, user=self.user, dbname=db)

    def create_database(self, name: str) -> str:
        """CREATE DATABASE *name*; returns its SQLAlchemy URL."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE *name* if it exists, ending its connections first."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            force = sql.SQL(" WITH (FORCE)") if conn.info.server_version >= 130000 else sql.SQL("")
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)) + force
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except (OSError, AssertionError):
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"

    # -- internals -------------------------------------------------------------
    def _prepare_owner(self) -> None:
        assert self.base_dir is not None
        if os.geteuid() != 0:
            self._run_as = []
            return
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(
                "running as root, but there is no 'postgres' user to run the server as: "
                + SETUP_HINT
            ) from None
        os.chown(self.base_dir, pw.pw_uid, pw.pw_gid)
        runuser = shutil.which("runuser")
        if runuser:
            self._run_as = [runuser, "-u", "postgres", "--"]
        else:
            self._run_as = ["su", "postgres", "-s", "/bin/sh", "-c", '"$0" "$@"']

    def _pg(self, *args: str | Path, what: str, timeout: float | None = None) -> str:
        cmd: Sequence[str] = self._run_as + [str(a) for a in args]
        try:
            proc = subprocess.run(
                cmd,
                cwd=self.base_dir,  # runuser keeps the cwd; the postgres user may not read ours
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout or self.start_timeout + 30,
                env={**os.environ, "LC_ALL": "C"},
            )
        except subprocess.TimeoutExpired as e:
            raise PostgresStartError(f"{what} timed out after {e.timeout}s\n{self.log_tail()}") from None
        if proc.returncode != 0:
            raise PostgresStartError(
                f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                f"{proc.stdout}{proc.stderr}\n--- server log tail ---\n{self.log_tail()}"
            )
        return proc.stdout

    def _write_conf(self, port: int) -> None:
        assert self.base_dir is not None
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(port),
            "unix_socket_directories": f"'{self.base_dir}'",
            "fsync": "on",
            "logging_collector": "off",
        }
        conf.update(self.settings)
        ours = self.data_dir / "ztpki.conf"
        main = self.data_dir / "postgresql.conf"
        if not ours.exists():
            with main.open("a") as f:
                f.write("\ninclude 'ztpki.conf'\n")
        ours.write_text(
            "# written by tests/pgcluster.py\n" + "".join(f"{k} = {v}\n" for k, v in conf.items())
        )
        if self._run_as:  # root wrote it into the postgres user's data dir
            pw = pwd.getpwnam("postgres")
            os.chown(ours, pw.pw_uid, pw.pw_gid)
        os.chmod(ours, 0o600)

    def _start_server(self, bindir: Path) -> None:
        # A free port can be taken by someone else (another xdist worker)
        # between our probe and the server's bind: retry with a new port.
        last_error: Exception | None = None
        for _attempt in range(5):
            port = _free_port()
            self._write_conf(port)
            log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            try:
                self._pg(
                    bindir / "pg_ctl", "start",
                    "-D", str(self.data_dir),
                    "-l", str(self.log_file),
                    "-w", "-t", str(int(self.start_timeout)),
                    what="pg_ctl start",
                )
            except PostgresStartError as e:
                last_error = e
                try:
                    with self.log_file.open("rb") as f:
                        f.seek(log_offset)
                        new_log = f.read().decode(errors="replace")
                except OSError:
                    new_log = ""
                if "could not bind" in new_log or "Address already in use" in new_log:
                    continue
                raise
            self.port = port
            self._running = True
            self._wait_ready()
            return
        raise PostgresStartError(f"could not find a free port after 5 tries: {last_error}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=5) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as e:
                last = e
                time.sleep(0.1)
        raise PostgresStartError(
            f"PostgreSQL on {self.host}:{self.port} did not accept connections within "
            f"{self.start_timeout}s: {last}\n--- server log tail ---\n{self.log_tail()}"
        )

    def _cleanup_dir(self) -> None:
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None


if __name__ == "__main__":  # pragma: no cover - manual use
    with PostgresCluster() as pg:
        pg.create_database("ztpki")
        print(pg.url("ztpki"), flush=True)
        print(f"server log: {pg.log_file}; Ctrl-C stops and removes the cluster", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


def cluster_or_skip() -> "Iterator[PostgresCluster]":
    """A started cluster for a pytest fixture, stopped afterwards. Missing
    PostgreSQL fails the test, unless ZTPKI_SKIP_POSTGRES=1 makes it a skip."""
    import pytest

    cluster = PostgresCluster()
    missing: str | None = None
    try:
        cluster.start()
    except PostgresUnavailable as exc:
        missing = str(exc)
    if missing is not None:
        if os.environ.get("ZTPKI_SKIP_POSTGRES") == "1":
            pytest.skip(f"ZTPKI_SKIP_POSTGRES=1 and {missing}")
        pytest.fail(f"{missing}\n(set ZTPKI_SKIP_POSTGRES=1 to skip these tests instead)", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()
