"""`ztpki demo` serves CMP and says how to use it: the `openssl cmp` commands
it prints (OpenSSL 3.0) run as printed, in order, against the running demo;
and what demo.json names (extra MAC credentials, vendor IDevIDs, devices to
be refused) behaves as described.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftools import ZTPKI, clean_env, free_port, run

READY_MARKER = "devices that are refused"  # the last line of the printed instructions


@dataclass
class Demo:
    directory: Path
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    info: dict[str, Any]
    printed: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assert_alive(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"ztpki demo died (exit {self.proc.returncode}); its output:\n{self.log()}", pytrace=False)


def start_demo(directory: Path, port: int, log_path: Path, timeout: float = 60) -> Demo | None:
    """`ztpki demo --dir DIR --port P`; None if the port was taken meanwhile."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(ZTPKI), "demo", "--dir", str(directory), "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=clean_env(), start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if proc.poll() is not None:
            if "in use" in text:
                return None
            pytest.fail(f"ztpki demo exited {proc.returncode} at start; its output:\n{text}", pytrace=False)
        if READY_MARKER in text:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    if resp.status == 200:
                        info = json.loads((directory / "demo.json").read_text())
                        return Demo(directory, port, proc, log_path, info, text)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
        time.sleep(0.1)
    stop(proc)
    pytest.fail(f"ztpki demo was not ready within {timeout}s; its output:\n{log_path.read_text()}", pytrace=False)


def stop(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the master and its workers
        proc.wait()
        raise AssertionError("ztpki demo ignored SIGTERM for 20 s") from None


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    # The port goes into the certificates' URLs at init: taken meanwhile, start over.
    for _attempt in range(3):
        base = tmp_path_factory.mktemp("demo")
        started = start_demo(base / "demo", free_port(), base / "demo.log")
        if started is not None:
            break
    else:
        pytest.fail("no free port for ztpki demo after 3 tries")
    try:
        yield started
    finally:
        code = stop(started.proc)
        assert code == 0, f"ztpki demo exited {code} on SIGTERM; its output:\n{started.log()}"


def printed_commands(printed: str) -> list[list[str]]:
    """The openssl commands of the printed CMP section, continuation lines joined."""
    section = printed[printed.index("Enrol over CMP"):printed.index("Enrol over EST")]
    joined = re.sub(r"\\\n\s*", " ", section)
    return [shlex.split(line) for line in (raw.strip() for raw in joined.splitlines()) if line.startswith("openssl ")]


def option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def verify(demo: Demo, certificate: Path | str) -> None:
    out = run(["openssl", "verify", "-CAfile", demo.info["root_ca"], "-untrusted", demo.info["issuing_ca"], certificate])
    assert out.stdout.strip().endswith("OK"), out.stdout


def cmp(demo: Demo, command: str, *args: object, check: bool = True) -> str:
    proc = run(
        ["openssl", "cmp", "-cmd", command, "-server", f"127.0.0.1:{demo.port}", "-path", ".well-known/cmp", *args],
        check=False, timeout=60,
    )
    out = proc.stdout + proc.stderr
    if check:
        assert proc.returncode == 0, out + "\n--- demo output ---\n" + demo.log()
    else:
        assert proc.returncode != 0, out
    demo.assert_alive()
    return out


def new_key(path: Path) -> Path:
    run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path])
    return path


# -- what the demo prints ---------------------------------------------------------------------


def test_demo_json_describes_cmp(demo: Demo) -> None:
    info = demo.info
    assert info["cmp_url"] == f"http://127.0.0.1:{demo.port}/.well-known/cmp"
    assert len(info["cmp"]["extra_credentials"]) >= 20
    assert len(info["vendor"]["devices"]) >= 5
    assert Path(info["cmp"]["server_cert"]).is_file()
    assert info["cmp_url"] in demo.printed


def test_printed_cmp_commands_run_as_printed(demo: Demo) -> None:
    commands = printed_commands(demo.printed)
    kinds = [option(c, "-cmd") for c in commands if c[1] == "cmp"]
    assert set(kinds) >= {"ir", "cr", "p10cr", "kur", "rr", "genm"}, kinds
    blocked = demo.info["blocked_device"]["cert"]
    outputs = {}
    for command in commands:
        refused = blocked in command
        proc = run(command, check=False, timeout=60)
        out = proc.stdout + proc.stderr
        shown = " ".join(command)
        if refused:
            assert proc.returncode != 0, f"{shown}\n{out}"
            assert "notAuthorized" in out, f"{shown}\n{out}"
        else:
            assert proc.returncode == 0, f"`{shown}` exited {proc.returncode}\n{out}\n--- demo ---\n{demo.log()}"
        demo.assert_alive()
        outputs[shown] = out
        certout = option(command, "-certout")
        if certout is not None and not refused:
            verify(demo, certout)
    assert any("id-it-caCerts" in out for shown, out in outputs.items() if "-cmd genm" in shown)
    assert any(": revoked" in out for shown, out in outputs.items() if shown.startswith("openssl ocsp"))
    root = Path(demo.info["root_ca"]).read_text().strip()
    capubs = [Path(option(c, "-cacertsout") or "") for c in commands if option(c, "-cacertsout")]
    assert capubs and all(p.read_text().strip() == root for p in capubs)  # TS 33.310: the operator root


# -- what demo.json names ------------------------------------------------------------------------


def test_an_extra_credential_enrols(demo: Demo, tmp_path: Path) -> None:
    credential = demo.info["cmp"]["extra_credentials"][5]
    cert = tmp_path / "extra.pem"
    out = cmp(demo, "ir", "-ref", credential["ref"], "-secret", f"pass:{credential['secret']}",
              "-recipient", "/CN=ztpki", "-trusted", demo.info["root_ca"],
              "-newkey", new_key(tmp_path / "extra.key"), "-subject", "/CN=extra", "-certout", cert)
    assert "received PKICONF" in out
    verify(demo, cert)


def test_a_vendor_device_enrols_with_its_idevid(demo: Demo, tmp_path: Path) -> None:
    device = demo.info["vendor"]["devices"][2]
    cert = tmp_path / "enb.pem"
    capubs = tmp_path / "capubs.pem"
    cmp(demo, "ir", "-cert", device["cert"], "-key", device["key"], "-trusted", demo.info["root_ca"],
        "-newkey", new_key(tmp_path / "enb.key"), "-subject", f"/CN={device['serial']}",
        "-certout", cert, "-cacertsout", capubs)
    verify(demo, cert)
    assert capubs.read_text().strip() == Path(demo.info["root_ca"]).read_text().strip()
    subject = run(["openssl", "x509", "-in", cert, "-noout", "-subject"]).stdout
    assert device["serial"] in subject


@pytest.mark.parametrize(("which", "fail_info"), [
    ("unregistered_device", "notAuthorized"),
    ("untrusted_device", "signerNotTrusted"),
    ("blocked_device", "notAuthorized"),
])
def test_refused_devices(demo: Demo, tmp_path: Path, which: str, fail_info: str) -> None:
    device = demo.info[which] if which == "blocked_device" else demo.info["vendor"][which]
    cert = tmp_path / "refused.pem"
    out = cmp(demo, "ir", "-cert", device["cert"], "-key", device["key"], "-trusted", demo.info["root_ca"],
              "-newkey", new_key(tmp_path / "refused.key"), "-subject", "/CN=refused", "-certout", cert,
              check=False)
    assert fail_info in out
    assert not cert.exists()


# -- EST over the demo's HTTPS (issue 6) ---------------------------------------------------------


def printed_est_commands(printed: str) -> list[str]:
    """The shell lines of the printed EST section up to strongSwan's, continuation lines joined."""
    section = printed[printed.index("Enrol over EST"):printed.index("strongSwan 5.9 pki")]
    joined = re.sub(r"\\\n\s*", " ", section)
    starts = ("curl ", "openssl ", "sleep ")
    return [line for line in (raw.strip() for raw in joined.splitlines()) if line.startswith(starts)]


def test_printed_strongswan_commands_run_as_printed(demo: Demo) -> None:
    """Issue 11: the printed pki lines work as printed, and pki trusts what it
    was issued (it needs the issuing CA among its --cacert files)."""
    section = demo.printed[demo.printed.index("strongSwan 5.9 pki"):demo.printed.index('demo.json "est" names')]
    commands = [line.strip() for line in section.splitlines() if line.strip().startswith(("pki ", "openssl "))]
    assert sum(c.startswith("pki --est ") for c in commands) == 2
    for command in commands:
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (command, proc.stdout[-2000:], proc.stderr[-2000:])
        assert "not trusted" not in proc.stderr, (command, proc.stderr[-2000:])


def test_the_printed_story_of_a_pending_request_matches_the_server(demo: Demo) -> None:
    """Issue 11: the printed wait is the Retry-After the server sends."""
    seconds = demo.info["est"]["retry_after_seconds"]
    assert f"Retry-After: {seconds}" in demo.printed and f"sleep {seconds};" in demo.printed
    for heading in ("== [1] Admin", "== [2] CMP", "== [3] EST"):
        assert demo.printed.count(heading) == 1


def test_demo_json_describes_est(demo: Demo) -> None:
    info, est = demo.info, demo.info["est"]
    assert info["est_url"] == f"https://127.0.0.1:{demo.port + 1}/.well-known/est"
    assert len(est["extra_credentials"]) >= 20
    assert all(Path(est[k]).is_file() for k in ("tls_ca", "device_cert", "device_key"))
    assert est["pending_url"].startswith(info["est_url"] + "/")
    assert info["est_url"] in demo.printed


def test_printed_est_commands_run_as_printed(demo: Demo) -> None:
    commands = printed_est_commands(demo.printed)
    assert sum("/simpleenroll" in c for c in commands) >= 5 and any("/simplereenroll" in c for c in commands)
    codes = []
    for command in commands:
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True,
                              env=clean_env(), timeout=60)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"`{command}` exited {proc.returncode}\n{out}\n--- demo ---\n{demo.log()}"
        if "%{http_code}" in command:
            codes.append(proc.stdout.strip())
        if " -i " in command:
            assert re.match(r"HTTP/\S+ 202", proc.stdout), out
            # The wait printed beside it is the one the server asks for (issue 11).
            seconds = demo.info["est"]["retry_after_seconds"]
            assert re.search(rf"^retry-after: {seconds}$", proc.stdout.lower(), re.M), out
        if command.startswith("openssl verify"):
            assert proc.stdout.strip().endswith("OK"), out
        demo.assert_alive()
    assert codes == ["401", "401", "403"], codes


def test_an_extra_est_credential_is_good_for_one_enrolment(demo: Demo, tmp_path: Path) -> None:
    est = demo.info["est"]
    credential = est["extra_credentials"][3]
    codes = []
    for name in ("one", "two"):  # two requests (the same one again would get its first answer)
        der = tmp_path / f"{name}.der"
        run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", tmp_path / f"{name}.key", "-subj", f"/CN={name}", "-outform", "DER", "-out", der])
        (tmp_path / f"{name}.csr").write_text(base64.encodebytes(der.read_bytes()).decode())
        codes.append(run([
            "curl", "-sS", "--cacert", est["tls_ca"], "-o", "/dev/null", "-w", "%{http_code}",
            "--user", f"{credential['user']}:{credential['password']}", "-H", "Content-Type: application/pkcs10",
            "--data-binary", f"@{tmp_path / f'{name}.csr'}", f"{demo.info['est_url']}/simpleenroll",
        ]).stdout)
    assert codes == ["200", "401"], codes
