"""The CA keys as pkcs11-tool sees them, and no private key in any file of the home."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftools import Instance, clean_env, issue, openssl_csr, run, ztpki
from conftools import instance, workdir  # noqa: F401  (fixtures)

REQUIRED_ACCESS = {"sensitive", "always sensitive", "never extractable"}


def private_key_objects(listing: str) -> list[dict[str, str]]:
    """The private key objects of `pkcs11-tool --list-objects`, as {attribute: value}."""
    objects: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in listing.splitlines():
        if line and not line[0].isspace():
            current = {"type": line.strip()} if line.startswith("Private Key Object") else None
            if current is not None:
                objects.append(current)
        elif current is not None and ":" in line:
            name, value = line.split(":", 1)
            current[name.strip()] = value.strip()
    return objects


def test_ca_keys_are_sensitive_and_never_extractable(instance: Instance, workdir: Path) -> None:
    # Use the keys once (an issuance and a CRL) so the check covers a working instance.
    issue(instance, openssl_csr(workdir, "t", "t.example.net", "rsa-2048"), workdir / "t.pem")
    ztpki("crl", "--out", workdir / "t.crl", home=instance.home)

    listing = run(
        ["pkcs11-tool", "--module", instance.module, "--login", "--pin", instance.pin(),
         "--token-label", instance.token_label, "--list-objects"],
        env=clean_env(SOFTHSM2_CONF=str(instance.softhsm_conf)),
    ).stdout
    keys = private_key_objects(listing)

    cas = json.loads(ztpki("ca", "list", "--json", home=instance.home).stdout)
    expected_labels = {ca["key_label"] for ca in cas}
    labels = {key.get("label") for key in keys}
    assert expected_labels <= labels, f"CA keys {expected_labels} not all in the token:\n{listing}"
    # root, issuing and the issuing CA's OCSP responder at least
    assert len(keys) >= 3, listing
    for key in keys:
        access = {part.strip() for part in key.get("Access", "").split(",")}
        assert REQUIRED_ACCESS <= access, f"private key {key.get('label')!r}: Access: {key.get('Access')}"
        assert "extractable" not in access


def test_no_private_key_in_any_file_of_the_home(instance: Instance, workdir: Path) -> None:
    issue(instance, openssl_csr(workdir, "g", "g.example.net"), workdir / "g.pem")
    home = instance.home
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.relative_to(home).parts[0] == "tokens" for p in files), "no token files to look at"
    grep = run(["grep", "-r", "-l", "-a", "PRIVATE KEY", home], check=False)
    assert grep.returncode == 1, f"grep found 'PRIVATE KEY' (or failed):\n{grep.stdout}{grep.stderr}"
    # The same search does find a key where there is one (the CSR key kept outside the home).
    control = run(["grep", "-r", "-l", "-a", "PRIVATE KEY", workdir], check=False)
    assert control.returncode == 0 and "g.key" in control.stdout
    assert not re.search(r"PRIVATE KEY", "".join(p.read_bytes().decode("latin-1") for p in files))
