"""Helpers for the CLI tests: ztpki.cli:main through click's CliRunner (in this
process, real SoftHSM2 token and SQLite store), CSRs made with cryptography.

Fixtures (imported by the test modules; no conftest.py here, so that
`from conftest import ...` in other test directories keeps meaning their own):

home      (module)    an instance made by `ztpki init` (SoftHSM2 token, SQLite)
csr_dir   (module)    a directory for CSRs, outside the home
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ztpki.cli import main

ZTPKI = Path(sys.executable).parent / "ztpki"

RECORD_KEYS = {
    "serial", "ca", "status", "subject", "sans", "device", "profile",
    "not_before", "not_after", "revoked_at", "revocation_reason", "created_at", "issuance",
}


@dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None
    args: list[str]

    def describe(self) -> str:
        return (
            f"ztpki {' '.join(self.args)} -> exit {self.exit_code}, exception {self.exception!r}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )

    def ok(self) -> "Outcome":
        assert self.exit_code == 0 and self.exception is None, self.describe()
        return self

    def json(self) -> Any:
        return json.loads(self.ok().stdout)


def cli(*args: object, env: dict[str, str] | None = None, input: bytes | str | None = None) -> Outcome:
    """Run `ztpki ARGS` in this process. The caller's ZTPKI_* variables are hidden,
    and SOFTHSM2_CONF is put back afterwards (the token code sets it)."""
    full_env: dict[str, str | None] = {
        "ZTPKI_HOME": None,
        "ZTPKI_TOKEN_PIN": None,
        "ZTPKI_DEBUG": None,
        "SOFTHSM2_CONF": os.environ.get("SOFTHSM2_CONF"),
    }
    full_env.update(env or {})
    str_args = [str(a) for a in args]
    result = CliRunner().invoke(main, str_args, env=full_env, input=input, catch_exceptions=True)
    exception = result.exception
    if isinstance(exception, SystemExit):
        exception = None  # how click ends every command, successful or not
    return Outcome(result.exit_code, result.stdout, result.stderr, exception, str_args)


def run_ztpki(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real executable, for what only a separate process shows (stderr, exit status)."""
    base = {k: v for k, v in os.environ.items() if k not in ("ZTPKI_HOME", "ZTPKI_TOKEN_PIN", "ZTPKI_DEBUG")}
    return subprocess.run(
        [str(ZTPKI), *map(str, args)], capture_output=True, text=True,
        env={**base, **(env or {})}, stdin=subprocess.DEVNULL, timeout=120,
    )


def assert_user_error(outcome: Outcome, *fragments: str) -> str:
    """One line on stderr naming the problem, exit code 1, nothing else."""
    assert outcome.exception is None, f"uncaught exception\n{outcome.describe()}"
    assert outcome.exit_code == 1, outcome.describe()
    everything = outcome.stdout + outcome.stderr
    assert "Traceback" not in everything, outcome.describe()
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line error\n{outcome.describe()}"
    line = lines[0]
    assert line.startswith("Error: "), outcome.describe()
    assert "internal error" not in line, outcome.describe()
    for fragment in fragments:
        assert fragment.lower() in line.lower(), f"{fragment!r} not named in {line!r}"
    assert outcome.stdout == "", outcome.describe()
    return line


def make_csr(
    cn: str = "device.example.net",
    *,
    key: Any = None,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    organization: str = "Example",
) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ]))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def write_csr(directory: Path, name: str, cn: str | None = None, **kwargs: Any) -> Path:
    path = directory / f"{name}.csr"
    path.write_bytes(make_csr(cn or f"{name}.example.net", **kwargs))
    return path


def init_home(home: Path, *extra: object) -> dict[str, Any]:
    summary: dict[str, Any] = cli("init", "--home", home, "--json", *extra).json()
    return summary


def load_chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "home"
    init_home(path)
    return path


@pytest.fixture(scope="module")
def csr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("csrs")
