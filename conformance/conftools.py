"""Helpers for the conformance tests: the real `ztpki` executable and real
third-party tools (openssl, curl, pkcs11-tool), always as subprocesses.

Nothing here imports ztpki: these tests look at it only from outside.

The fixtures are defined here and imported by the test modules (no conftest.py,
so `from conftest import ...` elsewhere in tests/ keeps meaning its own):

instance         (module)    a fresh instance (SQLite, SoftHSM2), URLs on a free port
served           (module)    an instance with a second issuing CA 'phones', and its
                             `ztpki serve` on that port
workdir          (function)  a directory outside every instance home (CSR keys go here)
pg_cluster       (session)   a throwaway PostgreSQL cluster (tests/pgcluster.py)
pg_database_url  (function)  a fresh database on it, dropped afterwards
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from pgcluster import PostgresCluster, cluster_or_skip  # noqa: E402

BIN_DIR = Path(sys.executable).parent
ZTPKI = BIN_DIR / "ztpki"

# Variables that would let the caller's environment steer ztpki or SoftHSM2.
_DROPPED_ENV = ("ZTPKI_HOME", "ZTPKI_TOKEN_PIN", "ZTPKI_DEBUG", "SOFTHSM2_CONF")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env["LC_ALL"] = "C"
    env.update(extra)
    return env


def run(
    args: Sequence[object],
    *,
    check: bool = True,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    cmd = [str(a) for a in args]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        errors="replace",
        env=env if env is not None else clean_env(),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"`{' '.join(cmd)}` exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return proc


def ztpki(*args: object, home: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    prefix: list[object] = [ZTPKI] + (["--home", home] if home is not None else [])
    return run([*prefix, *args], check=check)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Instance:
    home: Path
    port: int
    base_url: str
    token_label: str
    module: str

    @property
    def root_pem(self) -> Path:
        return self.home / "root.pem"

    @property
    def issuing_pem(self) -> Path:
        return self.home / "issuing.pem"

    @property
    def softhsm_conf(self) -> Path:
        return self.home / "softhsm2.conf"

    def pin(self) -> str:
        return (self.home / "token.pin").read_text().strip()


def init_instance(home: Path, *extra: object, port: int | None = None) -> Instance:
    """`ztpki init --home HOME --port P --base-url http://127.0.0.1:P [extra]`."""
    port = port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    ztpki("init", "--home", home, "--port", port, "--base-url", base_url, *extra)
    config = tomllib.loads((home / "ztpki.toml").read_text())
    return Instance(
        home=home,
        port=port,
        base_url=base_url,
        token_label=config["token"]["label"],
        module=config["token"]["module"],
    )


KEY_SPECS = {
    "ec-p256": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "rsa-2048": ["-newkey", "rsa:2048"],
    "rsa-1024": ["-newkey", "rsa:1024"],
}


def openssl_csr(workdir: Path, name: str, cn: str, key: str = "ec-p256", *extra: str) -> Path:
    """A CSR made by `openssl req`; its key stays in workdir (never in an instance home)."""
    csr = workdir / f"{name}.csr"
    run([
        "openssl", "req", "-new", *KEY_SPECS[key], "-nodes",
        "-keyout", workdir / f"{name}.key", "-subj", f"/O=Example/CN={cn}", *extra, "-out", csr,
    ])
    return csr


def issue(inst: Instance, csr: Path, out: Path, profile: str = "server", *extra: object) -> str:
    """Issue through the CLI; returns the serial as openssl prints it (upper-case hex)."""
    ztpki("issue", "--csr", csr, "--profile", profile, "--out", out, *extra, home=inst.home)
    return cert_serial(out)


def cert_serial(pem: Path) -> str:
    out = run(["openssl", "x509", "-in", pem, "-noout", "-serial"]).stdout.strip()
    assert out.startswith("serial="), out
    return out.removeprefix("serial=").upper()


def ocsp_url_of(pem: Path) -> str:
    url = run(["openssl", "x509", "-in", pem, "-noout", "-ocsp_uri"]).stdout.strip()
    assert url.startswith("http://"), f"no OCSP URL in the AIA of {pem}: {url!r}"
    return url


def crl_url_of(pem: Path) -> str:
    text = run(["openssl", "x509", "-in", pem, "-noout", "-ext", "crlDistributionPoints"]).stdout
    urls = re.findall(r"URI:(\S+)", text)
    assert len(urls) == 1, f"expected one CRL DP URI in {pem}:\n{text}"
    return str(urls[0])


def split_pem(text: str) -> list[str]:
    return re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)


def crl_entries(crl_text: str) -> dict[str, str | None]:
    """Serial (upper hex) → reason text, from `openssl crl -text`."""
    entries: dict[str, str | None] = {}
    current: str | None = None
    lines = crl_text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s+Serial Number: ([0-9A-Fa-f]+)", line)
        if m:
            current = m.group(1).upper()
            entries[current] = None
        elif current and "CRL Reason Code" in line and i + 1 < len(lines):
            entries[current] = lines[i + 1].strip()
        elif line.lstrip().startswith("Signature Algorithm") and not line.startswith(" " * 8):
            current = None
    return entries


class Server:
    """A running `ztpki serve` started by a fixture."""

    def __init__(self, inst: Instance, log_path: Path, *args: object) -> None:
        self.inst = inst
        self.log_path = log_path
        self.args = [str(a) for a in args]  # more `ztpki serve` options, e.g. --access-log
        self.url = inst.base_url
        self.proc: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace") or "(empty log)"
        except OSError:
            return "(no log)"

    def start(self, timeout: float = 30) -> bool:
        """Start and wait for /health. False if the port was taken meanwhile."""
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(ZTPKI), "--home", str(self.inst.home), "serve", "--port", str(self.inst.port), *self.args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=clean_env(), start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = self.log()
                if "in use" in text:  # gunicorn: "Connection in use: ('127.0.0.1', P)"
                    return False
                pytest.fail(f"ztpki serve exited {self.proc.returncode} at start; its log:\n{text}", pytrace=False)
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"ztpki serve did not answer /health within {timeout}s; its log:\n{self.log()}", pytrace=False)

    def assert_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"ztpki serve died (exit {self.proc.returncode}); its log:\n{self.log()}", pytrace=False)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # our own session: the master and its workers
            self.proc.wait()
            raise AssertionError(f"ztpki serve ignored SIGTERM for 20 s; its log:\n{self.log()}") from None


# -- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Instance:
    return init_instance(tmp_path_factory.mktemp("instance") / "home")


def edit_config(inst: Instance, **tables: dict[str, object]) -> None:
    """Set keys of ztpki.toml tables (the others keep what init wrote)."""
    import tomli_w

    path = inst.home / "ztpki.toml"
    config = tomllib.loads(path.read_text())
    for name, values in tables.items():
        config.setdefault(name, {}).update(values)
    path.write_text(tomli_w.dumps(config))


def serving(
    tmp_path_factory: pytest.TempPathFactory, name: str, configure: Callable[[Instance, Path], None] | None = None,
) -> Iterator[Server]:
    """The body of a fixture: init an instance, let `configure(inst, base)`
    prepare it, run `ztpki serve` on it, and stop it (exit 0) afterwards."""
    # The port is chosen before init (it goes into the certificates' URLs), so
    # someone may take it before serve binds it: then start over on another.
    for _attempt in range(3):
        base = tmp_path_factory.mktemp(name)
        inst = init_instance(base / "home")
        if configure is not None:
            configure(inst, base)
        server = Server(inst, base / "serve.log")
        if server.start():
            break
    else:
        pytest.fail(f"no free port for ztpki serve after 3 tries; last log:\n{server.log()}")
    try:
        yield server
    finally:
        code = server.stop()
        assert code == 0, f"ztpki serve exited {code} on SIGTERM; its log:\n{server.log()}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    def second_ca(inst: Instance, _base: Path) -> None:
        ztpki("ca", "add", "phones", home=inst.home)  # a second issuing CA behind the same URLs

    yield from serving(tmp_path_factory, "served", second_ca)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    yield from cluster_or_skip()


@pytest.fixture
def pg_database_url(pg_cluster: PostgresCluster) -> Iterator[str]:
    name = f"ztpki_conf_{uuid.uuid4().hex[:12]}"
    url = pg_cluster.create_database(name)
    yield url
    pg_cluster.drop_database(name)

