"""Key generation, attributes, signatures and decryption against a real SoftHSM2."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from hsm import (
    HsmError,
    KeyExists,
    KeyInfo,
    KeyNotFound,
    KeyType,
    SignAlgorithm,
    Token,
    TokenConfig,
    TokenUnavailable,
    default_sign_algorithm,
)

from hsmhelpers import USER_PIN, pkcs11_tool_objects, verify

_CURVES = {KeyType.EC_P256: ec.SECP256R1, KeyType.EC_P384: ec.SECP384R1}
_BITS = {KeyType.RSA_2048: 2048, KeyType.RSA_3072: 3072, KeyType.RSA_4096: 4096}
_PAIRS = [(kt, alg) for kt in KeyType for alg in SignAlgorithm if alg.fits(kt)]
_MISFITS = [(kt, alg) for kt in KeyType for alg in SignAlgorithm if not alg.fits(kt)]


def test_every_key_type_generated(keyed_token: Token) -> None:
    infos = {i.label: i for i in keyed_token.list_keys()}
    for kt in KeyType:
        assert infos[kt.value] == KeyInfo(kt.value, kt, sensitive=True, extractable=False, private=True)
        assert keyed_token.key_info(kt.value) == infos[kt.value]
        assert keyed_token.has_key(kt.value)
        public = keyed_token.public_key(kt.value)
        if kt.is_ec:
            assert isinstance(public, ec.EllipticCurvePublicKey)
            assert isinstance(public.curve, _CURVES[kt])
        else:
            assert isinstance(public, rsa.RSAPublicKey)
            assert public.key_size == _BITS[kt]
            assert public.public_numbers().e == 65537
    assert not keyed_token.has_key("no-such-key")


@pytest.mark.parametrize(("key_type", "algorithm"), _PAIRS, ids=[f"{k.value}-{a.value}" for k, a in _PAIRS])
def test_signature_verifies(keyed_token: Token, key_type: KeyType, algorithm: SignAlgorithm) -> None:
    data = b"tbsCertificate " + key_type.value.encode() + algorithm.value.encode()
    signature = keyed_token.sign(key_type.value, data, algorithm)
    public = keyed_token.public_key(key_type.value)
    verify(public, algorithm, signature, data)
    with pytest.raises(InvalidSignature):
        verify(public, algorithm, signature, data + b"!")
    if algorithm.is_ecdsa:
        r, s = decode_dss_signature(signature)  # DER SEQUENCE{r, s}, not raw r||s
        assert r > 0 and s > 0
    else:
        assert len(signature) == _BITS[key_type] // 8


@pytest.mark.parametrize("key_type", list(KeyType), ids=[k.value for k in KeyType])
def test_signer_defaults_and_caches_public_key(keyed_token: Token, key_type: KeyType) -> None:
    signer = keyed_token.signer(key_type.value)
    assert signer.label == key_type.value
    assert signer.key_type is key_type
    assert signer.algorithm is default_sign_algorithm(key_type)
    data = b"signer " + key_type.value.encode()
    verify(signer.public_key(), signer.algorithm, signer.sign(data), data)
    assert signer.public_key() is signer.public_key()


def test_default_algorithms() -> None:
    assert default_sign_algorithm(KeyType.EC_P256) is SignAlgorithm.ECDSA_SHA256
    assert default_sign_algorithm(KeyType.EC_P384) is SignAlgorithm.ECDSA_SHA384
    for kt in (KeyType.RSA_2048, KeyType.RSA_3072, KeyType.RSA_4096):
        assert default_sign_algorithm(kt) is SignAlgorithm.RSA_PKCS1_SHA256
    assert KeyType("rsa-3072") is KeyType.RSA_3072
    assert SignAlgorithm("rsa-pss-sha384") is SignAlgorithm.RSA_PSS_SHA384


@pytest.mark.parametrize(("key_type", "algorithm"), _MISFITS, ids=[f"{k.value}-{a.value}" for k, a in _MISFITS])
def test_mismatched_algorithm_refused(keyed_token: Token, key_type: KeyType, algorithm: SignAlgorithm) -> None:
    with pytest.raises(HsmError, match="cannot be used"):
        keyed_token.signer(key_type.value, algorithm)
    with pytest.raises(HsmError, match="cannot be used"):
        keyed_token.sign(key_type.value, b"data", algorithm)


def test_decrypt_pkcs1v15(keyed_token: Token) -> None:
    for kt in (KeyType.RSA_2048, KeyType.RSA_3072):
        public = keyed_token.public_key(kt.value)
        assert isinstance(public, rsa.RSAPublicKey)
        secret = os.urandom(32)
        assert keyed_token.decrypt(kt.value, public.encrypt(secret, padding.PKCS1v15())) == secret
    with pytest.raises(HsmError) as info:
        keyed_token.decrypt(KeyType.RSA_2048.value, b"\x00" * 256)
    # Nothing of python-pkcs11 escapes, not even as the exception's context.
    assert type(info.value).__module__ == "hsm.errors"
    assert info.value.__cause__ is None and info.value.__context__ is None
    with pytest.raises(HsmError, match="decrypt needs RSA"):
        keyed_token.decrypt(KeyType.EC_P256.value, b"\x00" * 32)


def test_key_exists_and_not_found(token: Token) -> None:
    info = token.generate_key("ca-key", KeyType.EC_P256)
    assert info.label == "ca-key"
    with pytest.raises(KeyExists):
        token.generate_key("ca-key", KeyType.RSA_2048)
    assert [i.label for i in token.list_keys()] == ["ca-key"]
    for call in (
        lambda: token.key_info("missing"),
        lambda: token.public_key("missing"),
        lambda: token.signer("missing"),
        lambda: token.sign("missing", b"x", SignAlgorithm.ECDSA_SHA256),
        lambda: token.decrypt("missing", b"x"),
    ):
        with pytest.raises(KeyNotFound, match="missing"):
            call()
    with pytest.raises(HsmError):
        token.generate_key("", KeyType.EC_P256)


def test_generate_invalidates_lookup_cache(token: Token) -> None:
    assert not token.has_key("later")
    token.generate_key("later", KeyType.EC_P384)
    assert token.has_key("later")
    data = b"after generation"
    verify(token.public_key("later"), SignAlgorithm.ECDSA_SHA384, token.sign("later", data, SignAlgorithm.ECDSA_SHA384), data)


def test_wrong_pin_is_token_unavailable_without_pin(softhsm_config: TokenConfig) -> None:
    wrong = "wrong-pin-271828"
    config = replace(softhsm_config, pin=wrong)
    assert wrong not in repr(config) and wrong not in str(config)
    bad = Token(config)
    with pytest.raises(TokenUnavailable) as info:
        bad.list_keys()
    assert "PIN_INCORRECT" in str(info.value)
    assert wrong not in str(info.value) and wrong not in repr(info.value)
    assert USER_PIN not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None
    good = Token(softhsm_config)
    assert good.list_keys() == []
    good.close()


def test_lazy_and_unavailable(softhsm_config: TokenConfig) -> None:
    missing_module = Token(replace(softhsm_config, module="/nonexistent/libpkcs11.so"))
    with pytest.raises(TokenUnavailable, match="cannot load"):
        missing_module.has_key("x")
    missing_label = Token(replace(softhsm_config, token_label="no-such-token"))
    with pytest.raises(TokenUnavailable, match="no-such-token"):
        missing_label.list_keys()


def test_attributes_seen_by_pkcs11_tool(token: Token, softhsm_config: TokenConfig) -> None:
    token.generate_key("ec-key", KeyType.EC_P256)
    token.generate_key("rsa-key", KeyType.RSA_2048)
    logged_in = pkcs11_tool_objects(softhsm_config, login=True)
    for label, usage in (("ec-key", {"sign"}), ("rsa-key", {"sign", "decrypt"})):
        private = [o for o in logged_in if o["kind"] == "Private Key Object" and o.get("label") == label]
        assert len(private) == 1
        access = {a.strip() for a in private[0]["Access"].split(",")}
        assert {"sensitive", "always sensitive", "never extractable", "local"} <= access
        assert "extractable" not in access
        assert set(private[0]["Usage"].replace(" ", "").split(",")) == usage
        assert private[0].get("ID")  # CKA_ID was set
        public = [o for o in logged_in if o["kind"] == "Public Key Object" and o.get("label") == label]
        assert len(public) == 1 and public[0]["ID"] == private[0]["ID"]
    anonymous = pkcs11_tool_objects(softhsm_config, login=False)
    assert not [o for o in anonymous if o["kind"] == "Private Key Object"]  # CKA_PRIVATE
    assert {o.get("label") for o in anonymous if o["kind"] == "Public Key Object"} == {"ec-key", "rsa-key"}
