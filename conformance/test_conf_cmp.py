"""The real `openssl cmp` (OpenSSL 3.0) against `ztpki serve`: RFC 9483 flows
and 3GPP TS 33.310 eNB bootstrapping with a vendor IDevID.

Issued certificates must pass `openssl verify`; refusals must make openssl
exit non-zero with the PKIFailureInfo we expect in its output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftools import Server, init_instance, run, ztpki
from conftools import pg_cluster, pg_database_url, served, workdir  # noqa: F401  (fixtures)

CMP_PATH = ".well-known/cmp"


def new_key(path: Path) -> Path:
    run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path])
    return path


def register(server: Server, workdir: Path, serial: str, vendor: str = "") -> None:
    records = workdir / f"{serial}.csv"
    records.write_text(f"serial,vendor,profile\n{serial},{vendor},enb\n")
    ztpki("devices", "import", records, home=server.inst.home)


def mac_credential(server: Server, serial: str) -> tuple[str, str]:
    out = ztpki("credentials", "create", "--device", serial, "--kind", "mac", "--json", home=server.inst.home).stdout
    created = json.loads(out[out.index("{") : out.rindex("}") + 1])
    return created["reference"], created["secret"]


def cmp(server: Server, command: str, *args: object, check: bool = True) -> str:
    proc = run(
        ["openssl", "cmp", "-cmd", command, "-server", f"127.0.0.1:{server.inst.port}", "-path", CMP_PATH, *args],
        check=False,
        timeout=60,
    )
    out = proc.stdout + proc.stderr
    if check:
        assert proc.returncode == 0, out + "\n--- server log ---\n" + server.log()
    else:
        assert proc.returncode != 0, out
    server.assert_alive()
    return out


def verify(server: Server, certificate: Path) -> None:
    out = run(["openssl", "verify", "-CAfile", server.inst.root_pem, "-untrusted", server.inst.issuing_pem, certificate]).stdout
    assert out.strip().endswith("OK"), out


@pytest.fixture(scope="module")
def vendor(served: Server, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """A vendor root that ztpki trusts; returns its directory (vroot.pem, vroot.key)."""
    directory = tmp_path_factory.mktemp("vendor")
    make_root(directory, "Acme Root")
    ztpki("vendors", "add", "acme", "--root", directory / "vroot.pem", home=served.inst.home)
    return directory


def make_root(directory: Path, name: str) -> None:
    run([
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", directory / "vroot.key", "-subj", f"/O=Acme/CN={name}", "-days", "3650",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", directory / "vroot.pem",
    ])


def idevid(root_dir: Path, workdir: Path, serial: str) -> tuple[Path, Path]:
    """A factory certificate naming the device in its subject serialNumber (IEEE 802.1AR style)."""
    key = workdir / f"{serial}-idevid.key"
    csr = workdir / f"{serial}-idevid.csr"
    cert = workdir / f"{serial}-idevid.pem"
    extensions = workdir / "idevid.cnf"
    extensions.write_text(
        "[dev]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    run([
        "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", key, "-subj", f"/O=Acme/serialNumber={serial}/CN=eNB {serial}", "-out", csr,
    ])
    run([
        "openssl", "x509", "-req", "-in", csr, "-CA", root_dir / "vroot.pem", "-CAkey", root_dir / "vroot.key",
        "-set_serial", str(abs(hash(serial)) % 10**12), "-days", "365",
        "-extfile", extensions, "-extensions", "dev", "-out", cert,
    ])
    return cert, key


def mac_ir(server: Server, workdir: Path, serial: str, ref: str, secret: str, *extra: object, check: bool = True) -> tuple[str, Path, Path]:
    key = new_key(workdir / f"{serial}-{ref}.key")
    cert = workdir / f"{serial}-{ref}.pem"
    out = cmp(
        server, "ir", "-ref", ref, "-secret", f"pass:{secret}", "-newkey", key, "-subject", f"/CN={serial}",
        "-recipient", "/CN=ztpki", "-trusted", server.inst.root_pem, "-certout", cert, *extra, check=check,
    )
    return out, key, cert


# -- issued ------------------------------------------------------------------------------


def test_mac_protected_ir_is_issued_and_verifies(served: Server, workdir: Path) -> None:  # noqa: F811
    register(served, workdir, "ENB-MAC-1")
    ref, secret = mac_credential(served, "ENB-MAC-1")
    capubs = workdir / "capubs.pem"
    out, _, cert = mac_ir(served, workdir, "ENB-MAC-1", ref, secret, "-cacertsout", capubs)
    assert "received PKICONF" in out
    verify(served, cert)
    assert capubs.read_text().strip() == served.inst.root_pem.read_text().strip()


def test_vendor_signed_ir_then_kur_then_rr(served: Server, vendor: Path, workdir: Path) -> None:  # noqa: F811
    register(served, workdir, "ENB-3GPP-1", vendor="acme")
    device_cert, device_key = idevid(vendor, workdir, "ENB-3GPP-1")
    key = new_key(workdir / "op.key")
    cert = workdir / "op.pem"
    capubs = workdir / "op-capubs.pem"
    cmp(served, "ir", "-cert", device_cert, "-key", device_key, "-newkey", key, "-subject", "/CN=ENB-3GPP-1",
        "-trusted", served.inst.root_pem, "-certout", cert, "-cacertsout", capubs)
    verify(served, cert)
    assert capubs.read_text().strip() == served.inst.root_pem.read_text().strip()  # TS 33.310: operator root

    new = new_key(workdir / "op2.key")
    renewed = workdir / "op2.pem"
    cmp(served, "kur", "-cert", cert, "-key", key, "-newkey", new, "-trusted", served.inst.root_pem, "-certout", renewed)
    verify(served, renewed)

    out = cmp(served, "rr", "-cert", renewed, "-key", new, "-oldcert", renewed, "-revreason", "4",
              "-trusted", served.inst.root_pem)
    assert "revocation accepted" in out
    status = run(["openssl", "ocsp", "-issuer", served.inst.issuing_pem, "-cert", renewed,
                  "-url", f"{served.url}/ocsp", "-CAfile", served.inst.root_pem]).stdout
    assert f"{renewed}: revoked" in status

    # kur with the revoked certificate is refused
    out = cmp(served, "kur", "-cert", renewed, "-key", new, "-newkey", new_key(workdir / "op3.key"),
              "-trusted", served.inst.root_pem, "-certout", workdir / "op3.pem", check=False)
    assert "certRevoked" in out


def test_p10cr_and_genm_cacerts(served: Server, workdir: Path) -> None:  # noqa: F811
    register(served, workdir, "ENB-P10-1")
    ref, secret = mac_credential(served, "ENB-P10-1")
    key = new_key(workdir / "p10.key")
    csr = workdir / "p10.csr"
    run(["openssl", "req", "-new", "-key", key, "-subj", "/CN=ENB-P10-1", "-out", csr])
    cert = workdir / "p10.pem"
    cmp(served, "p10cr", "-ref", ref, "-secret", f"pass:{secret}", "-csr", csr, "-recipient", "/CN=ztpki",
        "-certout", cert)
    verify(served, cert)
    out = cmp(served, "genm", "-ref", ref, "-secret", f"pass:{secret}", "-recipient", "/CN=ztpki",
              "-infotype", "caCerts")
    assert "id-it-caCerts" in out


# -- refused -----------------------------------------------------------------------------------


def last_audit(server: Server, device: str) -> dict[str, object]:
    records = json.loads(ztpki("audit", "list", "--json", "--device", device, home=server.inst.home).stdout)
    return dict(records[-1])


def test_a_dns_name_under_another_domain_is_refused_with_badCertTemplate(served: Server, vendor: Path, workdir: Path) -> None:  # noqa: F811
    """Issue 10 finding 2: the enb profile carries serverAuth, and '<serial>.<any domain>'
    was issued because only the first label was compared."""
    register(served, workdir, "ENB-SAN-1", vendor="acme")
    device_cert, device_key = idevid(vendor, workdir, "ENB-SAN-1")
    for name in ("ENB-SAN-1.evil.example", "enb-san-1.evil.example"):
        cert = workdir / "san.pem"
        out = cmp(served, "ir", "-cert", device_cert, "-key", device_key, "-newkey", new_key(workdir / "san.key"),
                  "-subject", "/CN=ENB-SAN-1", "-sans", name, "-trusted", served.inst.root_pem, "-certout", cert,
                  check=False)
        assert "badCertTemplate" in out and "rejection" in out, out
        assert not cert.exists()
        record = last_audit(served, "ENB-SAN-1")
        assert (record["outcome"], record["reason"], record["protocol"]) == ("rejected", "policy_violation", "cmp"), record
        assert "does not name device ENB-SAN-1" in str(record["details"]), record
    listed = json.loads(ztpki("certs", "list", "--device", "ENB-SAN-1", "--json", home=served.inst.home).stdout)
    assert listed == [], listed
    # The same device without the foreign name is issued (no dNSName: the default enb profile gives none).
    cmp(served, "ir", "-cert", device_cert, "-key", device_key, "-newkey", new_key(workdir / "ok.key"),
        "-subject", "/CN=ENB-SAN-1", "-trusted", served.inst.root_pem, "-certout", workdir / "ok.pem")
    text = run(["openssl", "x509", "-in", workdir / "ok.pem", "-noout", "-text"]).stdout
    assert "DNS:" not in text and "ENB-SAN-1" in text


def test_wrong_secret_is_refused_with_badMessageCheck(served: Server, workdir: Path) -> None:  # noqa: F811
    register(served, workdir, "ENB-MAC-2")
    ref, _ = mac_credential(served, "ENB-MAC-2")
    out, _, cert = mac_ir(served, workdir, "ENB-MAC-2", ref, "not-the-secret", check=False)
    assert "badMessageCheck" in out
    assert not cert.exists()


def test_unregistered_device_is_refused(served: Server, vendor: Path, workdir: Path) -> None:  # noqa: F811
    device_cert, device_key = idevid(vendor, workdir, "ENB-NOBODY")
    out = cmp(served, "ir", "-cert", device_cert, "-key", device_key, "-newkey", new_key(workdir / "n.key"),
              "-subject", "/CN=ENB-NOBODY", "-trusted", served.inst.root_pem, "-certout", workdir / "n.pem",
              check=False)
    assert "notAuthorized" in out


def test_untrusted_vendor_root_is_refused_with_signerNotTrusted(served: Server, workdir: Path) -> None:  # noqa: F811
    register(served, workdir, "ENB-FAKE-1", vendor="acme")
    stranger = workdir / "stranger"
    stranger.mkdir()
    make_root(stranger, "Acme Root")
    device_cert, device_key = idevid(stranger, workdir, "ENB-FAKE-1")
    out = cmp(served, "ir", "-cert", device_cert, "-key", device_key, "-newkey", new_key(workdir / "f.key"),
              "-subject", "/CN=ENB-FAKE-1", "-trusted", served.inst.root_pem, "-certout", workdir / "f.pem",
              check=False)
    assert "signerNotTrusted" in out


def test_replayed_request_is_refused_with_badSenderNonce(served: Server, workdir: Path) -> None:  # noqa: F811
    register(served, workdir, "ENB-REPLAY-1")
    ref, secret = mac_credential(served, "ENB-REPLAY-1")
    saved = workdir / "ir.der"
    _, _, first = mac_ir(served, workdir, "ENB-REPLAY-1", ref, secret, "-reqout", f"{saved},{workdir / 'certconf.der'}")
    first.unlink()
    # -reqin sends the saved ir again, byte for byte
    out, _, cert = mac_ir(served, workdir, "ENB-REPLAY-1", ref, secret, "-reqin", saved, check=False)
    assert "badSenderNonce" in out
    assert not cert.exists()


def test_template_outside_policy_is_refused_with_badCertTemplate(served: Server, workdir: Path) -> None:  # noqa: F811
    register(served, workdir, "ENB-WEAK-1")
    ref, secret = mac_credential(served, "ENB-WEAK-1")
    weak = workdir / "weak.key"
    run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out", weak])
    out = cmp(served, "ir", "-ref", ref, "-secret", f"pass:{secret}", "-newkey", weak, "-subject", "/CN=ENB-WEAK-1",
              "-recipient", "/CN=ztpki", "-certout", workdir / "weak.pem", check=False)
    assert "badCertTemplate" in out


def test_blocked_device_is_refused_with_notAuthorized(served: Server, vendor: Path, workdir: Path) -> None:  # noqa: F811
    register(served, workdir, "ENB-BLOCKED-1", vendor="acme")
    ztpki("devices", "block", "ENB-BLOCKED-1", home=served.inst.home)
    device_cert, device_key = idevid(vendor, workdir, "ENB-BLOCKED-1")
    out = cmp(served, "ir", "-cert", device_cert, "-key", device_key, "-newkey", new_key(workdir / "b.key"),
              "-subject", "/CN=ENB-BLOCKED-1", "-trusted", served.inst.root_pem, "-certout", workdir / "b.pem",
              check=False)
    assert "notAuthorized" in out


def test_pinned_cmp_protection_certificate(served: Server, vendor: Path, workdir: Path) -> None:  # noqa: F811
    """RFC 9483 §3.2: replies are signed by a dedicated CMP protection certificate
    (digitalSignature, id-kp-cmcRA), which a client may pin with -srvcert."""
    register(served, workdir, "ENB-PIN-1", vendor="acme")
    ref, secret = mac_credential(served, "ENB-PIN-1")
    mac_ir(served, workdir, "ENB-PIN-1", ref, secret)  # makes sure the certificate exists
    (pinned,) = sorted(served.inst.home.glob("cmp-protection-*.pem"))
    text = run(["openssl", "x509", "-in", pinned, "-noout", "-ext", "keyUsage,extendedKeyUsage"]).stdout
    assert "Digital Signature" in text and "CMC Registration Authority" in text, text
    device_cert, device_key = idevid(vendor, workdir, "ENB-PIN-1")
    cert = workdir / "pinned.pem"
    cmp(served, "ir", "-cert", device_cert, "-key", device_key, "-newkey", new_key(workdir / "pinned.key"),
        "-subject", "/CN=ENB-PIN-1", "-srvcert", pinned, "-certout", cert)
    verify(served, cert)


@pytest.mark.postgres
def test_enrolments_on_postgresql_with_several_workers(pg_database_url: str, tmp_path: Path) -> None:  # noqa: F811
    """ir and certConf arrive on separate connections, so on any of the
    workers: the transaction lives in PostgreSQL, not in a worker."""
    inst = init_instance(tmp_path / "home", "--database", pg_database_url)
    server = Server(inst, tmp_path / "serve.log")
    if not server.start():
        pytest.skip("the port was taken before ztpki serve bound it")
    try:
        for number in range(6):
            serial = f"ENB-PG-{number}"
            register(server, tmp_path, serial)
            ref, secret = mac_credential(server, serial)
            out, _, cert = mac_ir(server, tmp_path, serial, ref, secret)
            assert "received PKICONF" in out
            verify(server, cert)
    finally:
        assert server.stop() == 0, server.log()
