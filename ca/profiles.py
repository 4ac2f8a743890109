"""Certificate profiles: what a certificate of each kind may contain.

A profile is read from the instance's profiles.toml (see
default_profiles.toml for the fields). The profile, not the request, decides
key usage, EKU, lifetime and which subject attributes and SAN types survive.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

DEFAULT_PROFILES_PATH = Path(__file__).with_name("default_profiles.toml")


class ProfileError(ValueError):
    """A profile file or a profile name is wrong."""


class PolicyViolation(ValueError):
    """A request asks for something its profile does not allow."""


KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
)

EKUS: dict[str, ObjectIdentifier] = {
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "ocsp_signing": ExtendedKeyUsageOID.OCSP_SIGNING,
    "time_stamping": ExtendedKeyUsageOID.TIME_STAMPING,
    # RFC 4945 §5.1.3.12
    "ipsec_ike": ObjectIdentifier("1.3.6.1.5.5.7.3.17"),
    # RFC 6402 §2.10: the CMC RA EKU, for CMP/EST RA certificates
    "cmc_ra": ObjectIdentifier("1.3.6.1.5.5.7.3.28"),
}

SUBJECT_ATTRIBUTES: dict[str, ObjectIdentifier] = {
    "CN": NameOID.COMMON_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "serialNumber": NameOID.SERIAL_NUMBER,
    "emailAddress": NameOID.EMAIL_ADDRESS,
}

SAN_TYPES: dict[str, type[x509.GeneralName]] = {
    "dns": x509.DNSName,
    "ip": x509.IPAddress,
    "email": x509.RFC822Name,
    "uri": x509.UniformResourceIdentifier,
}

# Registry fields a dns_names rule may name; ra.policy fills them in.
DNS_NAME_FIELDS = ("serial", "mac", "imei", "hnb_id")
DNS_NAME_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
# RFC 1123 §2.1 / RFC 5890 §2.3.1: a letter-digit-hyphen label, no hyphen at its ends.
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")

KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")


def is_ldh_label(label: str, *, a_label_ok: bool) -> bool:
    """A lower-case LDH label. Hyphens in positions 3 and 4 make a reserved
    label (RFC 5890 §2.3.1): "xn--" is an IDNA A-label, which only an
    operator's own text may carry, never a value a device brought."""
    if _LDH_LABEL.fullmatch(label) is None:
        return False
    return label[2:4] != "--" or (a_label_ok and label.startswith("xn--"))


def is_host_name(name: str, *, a_labels_ok: bool = True) -> bool:
    """A fully qualified host name in its canonical form: lower-case ASCII LDH
    labels (RFC 1123 §2.1), two or more, at most 253 octets, no wildcard, no
    empty label and no trailing dot (RFC 5280 §4.2.1.6 forbids both), and a
    top-level label that is not all digits (RFC 3696 §2)."""
    if len(name) > 253 or not name.isascii():
        return False
    labels = name.split(".")
    return (
        len(labels) >= 2
        and all(is_ldh_label(label, a_label_ok=a_labels_ok) for label in labels)
        and not labels[-1].isdigit()
    )


def key_type_name(public_key: object) -> str:
    """The profile spelling of a public key's type, e.g. 'rsa-1024' or 'ec-secp521r1'."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        named = {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}
        return named.get(public_key.curve.name, f"ec-{public_key.curve.name}")
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"rsa-{public_key.key_size}"
    return type(public_key).__name__.removesuffix("PublicKey").lower() or "unknown"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    validity_days: int
    key_types: tuple[str, ...]
    key_usage: frozenset[str]
    extended_key_usage: tuple[ObjectIdentifier, ...]
    subject_attributes: tuple[str, ...]
    require_cn: bool
    san_types: frozenset[str]
    cn_as_dns_san: bool = False
    # Device certificates: the dNSNames a device may have, as templates of
    # its registry fields ("{serial}.enb.operator.example"); see ra.policy.
    dns_names: tuple[str, ...] = ()
    certificate_policies: tuple[ObjectIdentifier, ...] = ()
    ocsp_no_check: bool = False
    lint: bool = True
    # Read by the enrolment core (ra/), not by the CA: "auto" issues at once,
    # "manual" leaves requests pending for an admin; auto_register lets a
    # device unknown to the registry enrol with a trusted vendor certificate.
    approval: str = "auto"
    auto_register: bool = False
    # A request asking for CA:TRUE, a key usage or an EKU beyond the profile:
    # "refuse" it, or "drop" what it asked and issue what the profile says.
    excess_extensions: str = "refuse"
    # Read by the CMP server: a client asking for implicitConfirm (RFC 4210
    # §5.1.1.1, RFC 9483 §4.1.1) is granted it when this and [cmp]
    # allow_implicit_confirm are both true; otherwise it must send certConf.
    implicit_confirm: bool = True
    # Only the built-in CA profiles below set these; profiles.toml cannot.
    is_ca: bool = False
    path_length: int | None = None

    def check_public_key(self, public_key: object) -> None:
        """Refuse keys outside the profile (weak RSA, unlisted curves, other algorithms)."""
        name = key_type_name(public_key)
        if name not in self.key_types:
            raise PolicyViolation(
                f"key type {name} is not allowed by profile {self.name!r} "
                f"(allowed: {', '.join(self.key_types)})"
            )
        if isinstance(public_key, rsa.RSAPublicKey):
            # A tiny or even exponent makes the key insecure or unusable.
            exponent = public_key.public_numbers().e
            if exponent < 65537 or exponent % 2 == 0:
                raise PolicyViolation(f"RSA public exponent {exponent} is not allowed")

    def key_usage_extension(self, public_key: object) -> x509.KeyUsage:
        flags = {usage: usage in self.key_usage for usage in KEY_USAGES}
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            # RFC 8813 §3: EC keys cannot encipher; a profile shared by RSA
            # and EC devices keeps keyEncipherment for the RSA ones only.
            flags["key_encipherment"] = flags["data_encipherment"] = False
        else:
            flags["key_agreement"] = False
        # RFC 5280 §4.2.1.3: a CA certificate asserts keyCertSign and cRLSign.
        return x509.KeyUsage(
            digital_signature=flags["digital_signature"],
            content_commitment=flags["content_commitment"],
            key_encipherment=flags["key_encipherment"],
            data_encipherment=flags["data_encipherment"],
            key_agreement=flags["key_agreement"],
            key_cert_sign=self.is_ca,
            crl_sign=self.is_ca,
            encipher_only=False,
            decipher_only=False,
        )


def _string_list(raw: dict[str, Any], key: str, where: str) -> list[str]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProfileError(f"{where}: {key} must be a list of strings")
    return value


def _dns_name_rules(raw: dict[str, Any], where: str, san_types: list[str]) -> tuple[str, ...]:
    rules = []
    for rule in _string_list(raw, "dns_names", where):
        fields = DNS_NAME_PLACEHOLDER.findall(rule)
        unknown = [f for f in fields if f not in DNS_NAME_FIELDS]
        if unknown or not fields:
            # A name without a device field would be every device's name.
            raise ProfileError(
                f"{where}: dns_names entry {rule!r} must name the device with "
                f"{', '.join('{' + f + '}' for f in DNS_NAME_FIELDS)}"
            )
        if not is_host_name(DNS_NAME_PLACEHOLDER.sub("x", rule.lower())):
            raise ProfileError(f"{where}: dns_names entry {rule!r} is not a host name such as \"{{serial}}.enb.example\"")
        rules.append(rule.lower())
    if rules and "dns" not in san_types:
        raise ProfileError(f"{where}: dns_names needs \"dns\" in san_types")
    return tuple(rules)


def _parse_profile(name: str, raw: Any) -> Profile:
    where = f"profile {name!r}"
    if not isinstance(raw, dict):
        raise ProfileError(f"{where} must be a table")
    known = set(Profile.__dataclass_fields__) - {"name", "is_ca", "path_length"}
    unknown = set(raw) - known
    if unknown:
        raise ProfileError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    validity = raw.get("validity_days")
    if not isinstance(validity, int) or isinstance(validity, bool) or not 1 <= validity <= 36500:
        raise ProfileError(f"{where}: validity_days must be an integer from 1 to 36500")
    key_types = _string_list(raw, "key_types", where)
    bad = [k for k in key_types if k not in KEY_TYPES]
    if bad or not key_types:
        raise ProfileError(f"{where}: key_types must name some of {', '.join(KEY_TYPES)}")
    key_usage = _string_list(raw, "key_usage", where)
    if any(k not in KEY_USAGES for k in key_usage):
        raise ProfileError(f"{where}: key_usage must name some of {', '.join(KEY_USAGES)}")
    ekus = []
    for eku in _string_list(raw, "extended_key_usage", where):
        if eku in EKUS:
            ekus.append(EKUS[eku])
        else:
            try:
                ekus.append(ObjectIdentifier(eku))
            except ValueError:
                raise ProfileError(f"{where}: unknown extended_key_usage {eku!r}") from None
    attributes = _string_list(raw, "subject_attributes", where)
    if any(a not in SUBJECT_ATTRIBUTES for a in attributes):
        raise ProfileError(
            f"{where}: subject_attributes must name some of {', '.join(SUBJECT_ATTRIBUTES)}"
        )
    san_types = _string_list(raw, "san_types", where)
    if any(s not in SAN_TYPES for s in san_types):
        raise ProfileError(f"{where}: san_types must name some of {', '.join(SAN_TYPES)}")
    dns_names = _dns_name_rules(raw, where, san_types)
    try:
        policies = tuple(
            ObjectIdentifier(p) for p in _string_list(raw, "certificate_policies", where)
        )
    except ValueError:
        raise ProfileError(f"{where}: certificate_policies must be dotted OIDs") from None
    approval = raw.get("approval", "auto")
    if approval not in ("auto", "manual"):
        raise ProfileError(f"{where}: approval must be \"auto\" or \"manual\"")
    excess = raw.get("excess_extensions", "refuse")
    if excess not in ("refuse", "drop"):
        raise ProfileError(f"{where}: excess_extensions must be \"refuse\" or \"drop\"")
    flags = {}
    for flag in ("require_cn", "cn_as_dns_san", "ocsp_no_check", "lint", "auto_register", "implicit_confirm"):
        value = raw.get(flag, flag in ("require_cn", "lint", "implicit_confirm"))
        if not isinstance(value, bool):
            raise ProfileError(f"{where}: {flag} must be true or false")
        flags[flag] = value
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ProfileError(f"{where}: description must be a string")
    return Profile(
        name=name,
        description=description,
        validity_days=validity,
        key_types=tuple(key_types),
        key_usage=frozenset(key_usage),
        extended_key_usage=tuple(ekus),
        subject_attributes=tuple(attributes),
        require_cn=flags["require_cn"],
        san_types=frozenset(san_types),
        cn_as_dns_san=flags["cn_as_dns_san"],
        dns_names=dns_names,
        certificate_policies=policies,
        ocsp_no_check=flags["ocsp_no_check"],
        lint=flags["lint"],
        approval=approval,
        auto_register=flags["auto_register"],
        excess_extensions=excess,
        implicit_confirm=flags["implicit_confirm"],
    )


def parse_profiles(text: str, source: str = "profiles") -> dict[str, Profile]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{source}: {exc}") from None
    table = data.get("profiles")
    if not isinstance(table, dict) or not table:
        raise ProfileError(f"{source}: no [profiles.NAME] tables")
    return {name: _parse_profile(name, raw) for name, raw in table.items()}


def load_profiles(path: Path) -> dict[str, Profile]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"cannot read {path}: {exc.strerror}") from None
    return parse_profiles(text, str(path))


def default_profiles() -> dict[str, Profile]:
    return load_profiles(DEFAULT_PROFILES_PATH)


def ca_profile(name: str, *, validity_days: int, path_length: int | None) -> Profile:
    """Built-in profile for root and issuing CA certificates (RFC 5280 §4.2.1.9)."""
    return Profile(
        name=name,
        description="certification authority",
        validity_days=validity_days,
        key_types=KEY_TYPES,
        key_usage=frozenset({"digital_signature"}),
        extended_key_usage=(),
        subject_attributes=tuple(SUBJECT_ATTRIBUTES),
        require_cn=True,
        san_types=frozenset(),
        is_ca=True,
        path_length=path_length,
    )
