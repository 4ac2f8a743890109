"""ensure_softhsm_token: private SoftHSM2 homes."""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess

import pytest

from hsm import HsmConfigError, Token, TokenUnavailable, ensure_softhsm_token
from hsmhelpers import SO_PIN, USER_PIN


def _labels(conf: str) -> list[str]:
    out = subprocess.run(
        ["softhsm2-util", "--show-slots"], env={**os.environ, "SOFTHSM2_CONF": conf},
        capture_output=True, text=True, check=True,
    ).stdout
    return [line.split(":", 1)[1].strip() for line in out.splitlines() if line.strip().startswith("Label:")]


def test_home_layout_and_idempotence(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "h"
    cfg = ensure_softhsm_token(home, "ca-one", so_pin=SO_PIN, user_pin=USER_PIN)
    assert cfg.softhsm_conf == str(home / "softhsm2.conf")
    assert cfg.token_label == "ca-one" and cfg.pin == USER_PIN and os.path.exists(cfg.module)
    conf = (home / "softhsm2.conf").read_text().splitlines()
    assert f"directories.tokendir = {home / 'tokens'}" in conf
    assert "objectstore.backend = file" in conf and "log.level = ERROR" in conf
    assert stat.S_IMODE((home / "tokens").stat().st_mode) == 0o700
    assert _labels(cfg.softhsm_conf).count("ca-one") == 1

    again = ensure_softhsm_token(home, "ca-one", so_pin=SO_PIN, user_pin=USER_PIN)
    assert again == cfg
    assert _labels(cfg.softhsm_conf).count("ca-one") == 1
    second = ensure_softhsm_token(home, "ca-two", so_pin=SO_PIN, user_pin="other-pin-1")
    assert {"ca-one", "ca-two"} <= set(_labels(cfg.softhsm_conf))
    assert Token(cfg).list_keys() == [] and Token(second).list_keys() == []


def test_missing_softhsm(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TokenUnavailable, match="does not exist"):
        ensure_softhsm_token(tmp_path, "x", so_pin=SO_PIN, user_pin=USER_PIN, module="/nope/libsofthsm2.so")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(TokenUnavailable, match="softhsm2-util"):
        ensure_softhsm_token(tmp_path, "x", so_pin=SO_PIN, user_pin=USER_PIN)


def test_init_failure_does_not_show_pins(tmp_path: pathlib.Path) -> None:
    so_pin = "distinctive-so-secret-" * 20  # SoftHSM2 refuses PINs over 255 characters
    with pytest.raises(TokenUnavailable, match="--init-token failed") as info:
        ensure_softhsm_token(tmp_path, "long-pins", so_pin=so_pin, user_pin=USER_PIN)
    assert "distinctive" not in str(info.value) and USER_PIN not in str(info.value)
    with pytest.raises(HsmConfigError):
        ensure_softhsm_token(tmp_path, "x" * 33, so_pin=SO_PIN, user_pin=USER_PIN)
