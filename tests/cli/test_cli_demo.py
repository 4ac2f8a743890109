"""`ztpki demo --dir DIR --no-serve`: DIR/demo.json, and a second run reuses the instance."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from cryptography import x509

from clihelpers import cli


def test_demo_prepares_and_reuses(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    first = cli("demo", "--dir", demo_dir, "--no-serve", "--port", "18443").ok()
    assert "Traceback" not in first.stdout + first.stderr
    info = json.loads((demo_dir / "demo.json").read_text())
    for key in ("home", "root_ca", "issuing_ca", "base_url", "crl_url", "ocsp_url"):
        assert isinstance(info.get(key), str) and info[key], f"demo.json lacks {key}: {info}"
    assert Path(info["home"]) == demo_dir.resolve()
    assert info["base_url"] == "http://127.0.0.1:18443"
    assert info["crl_url"].startswith(info["base_url"] + "/") and info["crl_url"].endswith(".crl")
    assert info["ocsp_url"].startswith(info["base_url"] + "/")

    root = x509.load_pem_x509_certificate(Path(info["root_ca"]).read_bytes())
    issuing = x509.load_pem_x509_certificate(Path(info["issuing_ca"]).read_bytes())
    assert root.subject == root.issuer
    assert issuing.issuer == root.subject and issuing.subject != root.subject
    issuing.verify_directly_issued_by(root)

    # The URLs in the instance's certificates are the ones demo.json names.
    for example in info.get("examples", {}).values():
        leaf = x509.load_pem_x509_certificate(Path(example["cert"]).read_bytes())
        aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        assert info["ocsp_url"] in [d.access_location.value for d in aia]
        verify = subprocess.run(
            ["openssl", "verify", "-CAfile", info["root_ca"], "-untrusted", info["issuing_ca"], example["cert"]],
            capture_output=True, text=True,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr

    listed = cli("--home", info["home"], "certs", "list", "--json").json()
    root_bytes = Path(info["root_ca"]).read_bytes()

    second = cli("demo", "--dir", demo_dir, "--no-serve").ok()
    assert "Traceback" not in second.stdout + second.stderr
    again = json.loads((demo_dir / "demo.json").read_text())
    assert again == info
    assert Path(again["root_ca"]).read_bytes() == root_bytes
    assert cli("--home", info["home"], "certs", "list", "--json").json() == listed
