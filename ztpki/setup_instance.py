"""`ztpki init`: a new instance home with its token, store and CA hierarchy."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

from ca import hierarchy
from ca.profiles import DEFAULT_PROFILES_PATH
from hsm import KeyType, ensure_softhsm_token
from ztpki.instance import SECRETS_KEY_LABEL, Instance
from ztpki.config import (
    CONFIG_NAME,
    DEFAULT_PORT,
    ConfigError,
    Settings,
    TokenSettings,
    write_secret,
    write_settings,
)


def _ocsp_key_type(ca_key: KeyType) -> KeyType:
    # The responder signs every OCSP answer: P-256 costs ~0.1 ms in SoftHSM2,
    # RSA-2048 ~1.1 ms (../shared/LIMITS.md). RSA CAs get an RSA responder so
    # clients that only do RSA still verify it.
    return KeyType.EC_P256 if ca_key.value.startswith("ec") else KeyType.RSA_2048


def init_instance(
    home: Path,
    *,
    key_type: KeyType = KeyType.EC_P256,
    pkcs11_module: str | None = None,
    token_label: str | None = None,
    pin: str | None = None,
    database: str | None = None,
    base_url: str | None = None,
    organization: str = "ztpki",
    issuing_ca: str = "issuing",
    port: int = DEFAULT_PORT,
) -> Instance:
    home = home.resolve()
    if (home / CONFIG_NAME).exists():
        raise ConfigError(f"{home} holds a ztpki instance already")
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    label = token_label or f"ztpki-{secrets.token_hex(4)}"
    if pkcs11_module is None:
        user_pin = pin or secrets.token_urlsafe(18)
        config = ensure_softhsm_token(
            home, label, so_pin=secrets.token_urlsafe(18), user_pin=user_pin
        )
        token = TokenSettings(
            module=config.module, label=label, pin_file="token.pin", softhsm_conf="softhsm2.conf"
        )
        write_secret(home / "token.pin", user_pin)
    else:
        if not Path(pkcs11_module).is_file():
            raise ConfigError(f"PKCS#11 module {pkcs11_module} does not exist")
        if token_label is None:
            raise ConfigError("--token-label is needed with --pkcs11-module")
        token = TokenSettings(module=pkcs11_module, label=label, pin_file="token.pin")
        if pin is not None:
            write_secret(home / "token.pin", pin)
    settings = Settings(
        home=home,
        base_url=base_url or f"http://127.0.0.1:{port}",
        default_ca=issuing_ca,
        database=database or "sqlite:///ztpki.db",
        token=token,
        port=port,
    )
    shutil.copyfile(DEFAULT_PROFILES_PATH, settings.profiles_path)
    write_settings(settings)
    instance = Instance(settings)
    instance.token.generate_secret_key(SECRETS_KEY_LABEL)
    cas = instance.cas
    hierarchy.create_root(
        cas, "root", hierarchy.simple_name(f"{organization} Root CA", organization), key_type
    )
    hierarchy.create_issuing(
        cas,
        issuing_ca,
        hierarchy.simple_name(f"{organization} Issuing CA", organization),
        key_type,
        parent="root",
    )
    hierarchy.create_ocsp_signer(cas, issuing_ca, _ocsp_key_type(key_type))
    instance.revocations.publish_crl("root")
    instance.revocations.publish_crl(issuing_ca)
    export_ca_certificates(instance)
    return instance


def export_ca_certificates(instance: Instance) -> dict[str, Path]:
    """HOME/<ca>.pem for every CA, for openssl -CAfile / -untrusted."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    paths = {}
    for record in instance.store.list_authorities():
        path = instance.settings.home / f"{record.name}.pem"
        path.write_bytes(x509.load_der_x509_certificate(record.certificate).public_bytes(Encoding.PEM))
        paths[record.name] = path
    return paths


__all__ = ["init_instance", "export_ca_certificates"]
