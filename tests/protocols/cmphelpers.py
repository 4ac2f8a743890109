"""Shared helpers for the CMP tests: the golden vectors and what their names mean."""

from __future__ import annotations

from pathlib import Path

VECTOR_DIR = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "cmp" / "lightweightcmpra"

# File-name stem (after downstream_/upstream_) → PKIBody alternative (RFC 4210 §5.1.2).
BODY_TYPE_OF_NAME = {
    "INIT_REQ": "ir",
    "INIT_REP": "ip",
    "CERT_REQ": "cr",
    "CERT_REP": "cp",
    "KEY_UPDATE_REQ": "kur",
    "KEY_UPDATE_REP": "kup",
    "CERT_CONFIRM": "certConf",
    "CONFIRM": "pkiconf",
    "POLL_REQ": "pollReq",
    "POLL_REP": "pollRep",
    "REVOCATION_REQ": "rr",
    "REVOCATION_REP": "rp",
}


def vector_paths() -> list[Path]:
    return sorted(VECTOR_DIR.glob("*/*.PKI"))


def vector_id(path: Path) -> str:
    return "%s/%s" % (path.parent.name, path.stem)


def expected_body_type(path: Path) -> str:
    return BODY_TYPE_OF_NAME[path.stem.split("_", 1)[1]]


def load_vector(flow: str, name: str) -> bytes:
    return (VECTOR_DIR / flow / (name + ".PKI")).read_bytes()
