"""TokenConfig.from_uri: RFC 7512 parsing, PIN sources, errors, fuzzing."""

from __future__ import annotations

import pathlib
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm import HsmConfigError, HsmError, TokenConfig

MOD = "/usr/lib/softhsm/libsofthsm2.so"


def test_basic_uri() -> None:
    cfg = TokenConfig.from_uri(f"pkcs11:token=ca;object=x?module-path={MOD}&pin-value=1234")
    assert cfg == TokenConfig(module=MOD, token_label="ca", pin="1234")
    assert "1234" not in repr(cfg) and "1234" not in str(cfg)


def test_percent_decoding() -> None:
    uri = "pkcs11:token=Z%C3%BCrich%20CA%3B1?module-path=/opt/my%20hsm/lib.so&pin-value=p%26w%3Dd"
    cfg = TokenConfig.from_uri(uri)
    assert cfg.token_label == "Zürich CA;1"
    assert cfg.module == "/opt/my hsm/lib.so"
    assert cfg.pin == "p&w=d"


def test_scheme_case_and_vendor_attributes() -> None:
    cfg = TokenConfig.from_uri("PKCS11:x-vendor=1;token=t?x-foo=bar&pin-value=1&module-path=/m.so")
    assert (cfg.token_label, cfg.pin, cfg.module) == ("t", "1", "/m.so")


def test_keywords_win(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = "pkcs11:token=t?module-path=/uri.so&pin-value=uri-pin"
    assert TokenConfig.from_uri(uri).pin == "uri-pin"
    cfg = TokenConfig.from_uri(uri, module="/kw.so", pin="kw-pin", softhsm_conf="/c.conf")
    assert (cfg.module, cfg.pin, cfg.softhsm_conf) == ("/kw.so", "kw-pin", "/c.conf")
    monkeypatch.setenv("ZTPKI_TEST_PIN", "env-pin")
    assert TokenConfig.from_uri(uri, pin_env="ZTPKI_TEST_PIN").pin == "env-pin"
    pin_file = tmp_path / "pin"
    pin_file.write_text("file-pin\n")
    assert TokenConfig.from_uri(uri, pin_file=str(pin_file)).pin == "file-pin"
    assert TokenConfig.from_uri(uri, pin="p", pin_env="ZTPKI_TEST_PIN").pin == "p"


def test_pin_source(tmp_path: pathlib.Path) -> None:
    pin_file = tmp_path / "my pin"
    pin_file.write_text("s3cret\r\n")
    encoded = quote(str(pin_file))
    for source in (encoded, f"file:{encoded}", f"file://{encoded}", f"file://localhost{encoded}"):
        cfg = TokenConfig.from_uri(f"pkcs11:token=t?module-path=/m.so&pin-source={source}")
        assert cfg.pin == "s3cret", source


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("token=t", "not a pkcs11"),
        ("pkcs12:token=t", "not a pkcs11"),
        ("pkcs11:?module-path=/m.so&pin-value=1", "no token"),
        ("pkcs11:token=?module-path=/m.so&pin-value=1", "empty token"),
        ("pkcs11:token=t?pin-value=1", "no PKCS#11 module"),
        ("pkcs11:token=t?module-path=/m.so", "no PIN"),
        ("pkcs11:token=t?module-path=/m.so&pin-value=", "empty"),
        ("pkcs11:token=t;token=u?module-path=/m.so&pin-value=1", "more than once"),
        ("pkcs11:tokn=t?module-path=/m.so&pin-value=1", "unknown path attribute"),
        ("pkcs11:token=t?module-path=/m.so&pin=1", "unknown query attribute"),
        ("pkcs11:token=t;?module-path=/m.so&pin-value=1", "without name=value"),
        ("pkcs11:token?module-path=/m.so&pin-value=1", "without name=value"),
        ("pkcs11:token=a b?module-path=/m.so&pin-value=1", "percent-encoded"),
        ("pkcs11:token=a%2?module-path=/m.so&pin-value=1", "percent-escape"),
        ("pkcs11:token=a%zz?module-path=/m.so&pin-value=1", "percent-escape"),
        ("pkcs11:token=%ff?module-path=/m.so&pin-value=1", "not UTF-8"),
        ("pkcs11:token=t?module-path=/m.so&pin-value=1&pin-source=/f", "both"),
        ("pkcs11:token=t?module-path=/m.so&pin-source=%7C/bin/pin", "not supported"),
        ("pkcs11:token=t?module-path=/m.so&pin-source=file://evil.example/f", "local"),
        ("pkcs11:token=t?module-path=/m.so&pin-source=/nonexistent/pin", "cannot read"),
        ("pkcs11:token=t?module-path=/m.so&pin-source=/dev/zero", "longer than"),
    ],
)
def test_errors(uri: str, message: str) -> None:
    with pytest.raises(HsmConfigError, match=message) as info:
        TokenConfig.from_uri(uri)
    assert isinstance(info.value, ValueError) and isinstance(info.value, HsmError)


def test_pin_never_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    pin = "Secret%20PIN-9"
    for uri in (
        f"pkcs11:token=t?pin-value={pin}",
        f"pkcs11:token=t?module-path=/m.so&pin-value={pin}&pin-source=/f",
        f"pkcs11:token=t?module-path=/m.so&pin-value={pin} x",
        f"pkcs11:token=t?module-path=/m.so&pin-value={pin}%ff",
    ):
        with pytest.raises(HsmConfigError) as info:
            TokenConfig.from_uri(uri)
        assert "Secret" not in str(info.value)
    monkeypatch.delenv("ZTPKI_UNSET_PIN", raising=False)
    with pytest.raises(HsmConfigError, match="ZTPKI_UNSET_PIN"):
        TokenConfig.from_uri("pkcs11:token=t?module-path=/m.so", pin_env="ZTPKI_UNSET_PIN")


_ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=80)
_URI_ALPHABET = "pkcs11:token=module-path?pin-value&source;%0aF/|x-éz \x00"


@settings(max_examples=400, deadline=None)
@given(st.one_of(_ANY_TEXT, st.text(_URI_ALPHABET, max_size=80).map(lambda s: "pkcs11:" + s)))
def test_fuzz_only_config_errors(uri: str) -> None:
    try:
        cfg = TokenConfig.from_uri(uri)
    except HsmConfigError:
        return
    assert cfg.token_label and cfg.module and cfg.pin


@settings(max_examples=200, deadline=None)
@given(label=st.text(min_size=1, max_size=32), pin=st.text(min_size=1, max_size=40), module=st.text(min_size=1))
def test_round_trip(label: str, pin: str, module: str) -> None:
    try:
        label.encode("utf-8")
        pin.encode("utf-8")
        module.encode("utf-8")
    except UnicodeEncodeError:
        return  # lone surrogates cannot appear in a URI at all
    uri = f"pkcs11:token={quote(label, safe='')}?module-path={quote(module, safe='/')}&pin-value={quote(pin, safe='')}"
    cfg = TokenConfig.from_uri(uri)
    assert (cfg.token_label, cfg.module, cfg.pin) == (label, module, pin)
