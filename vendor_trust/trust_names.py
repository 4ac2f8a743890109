"""Name constraints (RFC 5280 §4.2.1.10, §6.1.3(b)-(c), §6.1.4(g)).

Supported name forms: directoryName (applied to the subject and to SAN
directoryNames), dNSName, iPAddress and rfc822Name (SAN, and the subject's
emailAddress attributes). A critical constraint on any other form
(otherName, URI, registeredID) is refused when a later certificate carries a
name of that form, as §4.2.1.10 requires of an implementation that cannot
process it; a non-critical one is ignored.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Sequence

from cryptography import x509
from cryptography.x509.oid import NameOID

from vendor_trust.trust_errors import UntrustedChain

_SUPPORTED = (x509.DirectoryName, x509.DNSName, x509.IPAddress, x509.RFC822Name)
_UNSUPPORTED = (x509.OtherName, x509.UniformResourceIdentifier, x509.RegisteredID)

RdnKey = frozenset[tuple[str, "str | bytes"]]


@dataclass(frozen=True)
class _Layer:
    """The constraints one CA certificate (or the anchor) imposes below it."""

    owner: str
    critical: bool
    permitted: tuple[x509.GeneralName, ...] | None
    excluded: tuple[x509.GeneralName, ...]


def check_name_constraints(path: Sequence[x509.Certificate], anchor: x509.Certificate) -> None:
    """path: device certificate first, anchor excluded. Raises UntrustedChain."""
    layers: list[_Layer] = []
    # RFC 5937 §3: constraints in the anchor certificate bind the whole path;
    # a vendor that scoped its root meant it.
    _add_layer(layers, anchor)
    for index in range(len(path) - 1, -1, -1):
        certificate = path[index]
        is_leaf = index == 0
        # §6.1.3(b): self-issued intermediates are exempt, the final certificate is not.
        if layers and (is_leaf or not is_self_issued(certificate)):
            names = _names_of(certificate)
            for layer in layers:
                _check_layer(layer, names, certificate)
        if not is_leaf:
            _add_layer(layers, certificate)


def is_self_issued(certificate: x509.Certificate) -> bool:
    return certificate.subject == certificate.issuer


def describe(certificate: x509.Certificate) -> str:
    subject = certificate.subject.rfc4514_string() or "(empty subject)"
    if len(subject) > 120:
        subject = subject[:117] + "..."
    return f"'{subject}' (serial {certificate.serial_number:x})"


def _add_layer(layers: list[_Layer], certificate: x509.Certificate) -> None:
    try:
        extension = certificate.extensions.get_extension_for_class(x509.NameConstraints)
    except x509.ExtensionNotFound:
        return
    value = extension.value
    layers.append(
        _Layer(
            owner=describe(certificate),
            critical=extension.critical,
            permitted=tuple(value.permitted_subtrees) if value.permitted_subtrees is not None else None,
            excluded=tuple(value.excluded_subtrees or ()),
        )
    )


def _names_of(certificate: x509.Certificate) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    # §4.2.1.10: directoryName constraints apply to a non-empty subject.
    if len(certificate.subject) > 0:
        names.append(x509.DirectoryName(certificate.subject))
    # §4.2.1.10: rfc822Name constraints also bind emailAddress in the subject.
    for attribute in certificate.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
        if isinstance(attribute.value, str):
            names.append(x509.RFC822Name(attribute.value))
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return names
    names.extend(san.value)
    return names


def _check_layer(layer: _Layer, names: list[x509.GeneralName], certificate: x509.Certificate) -> None:
    for name in names:
        if isinstance(name, _UNSUPPORTED):
            if layer.critical and _constrains_form(layer, name):
                raise UntrustedChain(
                    f"{layer.owner} constrains {type(name).__name__} names, which this "
                    f"validator cannot check, and {describe(certificate)} carries one"
                )
            continue
        if not isinstance(name, _SUPPORTED):
            continue
        same_form_permitted = [p for p in layer.permitted or () if type(p) is type(name)]
        if same_form_permitted and not any(_within(name, p, excluded=False) for p in same_form_permitted):
            raise UntrustedChain(
                f"{describe(certificate)}: {_show(name)} is outside the permitted names of {layer.owner}"
            )
        for subtree in layer.excluded:
            if type(subtree) is type(name) and _within(name, subtree, excluded=True):
                raise UntrustedChain(
                    f"{describe(certificate)}: {_show(name)} is among the excluded names of {layer.owner}"
                )


def _constrains_form(layer: _Layer, name: x509.GeneralName) -> bool:
    for subtree in (*(layer.permitted or ()), *layer.excluded):
        if type(subtree) is not type(name):
            continue
        if isinstance(name, x509.OtherName) and isinstance(subtree, x509.OtherName):
            if subtree.type_id != name.type_id:
                continue
        return True
    return False


def _within(name: x509.GeneralName, subtree: x509.GeneralName, *, excluded: bool) -> bool:
    if isinstance(name, x509.DirectoryName) and isinstance(subtree, x509.DirectoryName):
        return _dn_within(name.value, subtree.value)
    if isinstance(name, x509.DNSName) and isinstance(subtree, x509.DNSName):
        return _dns_within(name.value, subtree.value, excluded=excluded)
    if isinstance(name, x509.IPAddress) and isinstance(subtree, x509.IPAddress):
        return _ip_within(name.value, subtree.value)
    if isinstance(name, x509.RFC822Name) and isinstance(subtree, x509.RFC822Name):
        return _mailbox_within(name.value, subtree.value)
    return False


def _rdn_key(rdn: x509.RelativeDistinguishedName) -> RdnKey:
    # §7.1 compares names case-insensitively after normalising white space
    # (RFC 4518); a simplified form of that, so that an excluded subtree
    # cannot be dodged by changing the case of an attribute.
    return frozenset(
        (a.oid.dotted_string, " ".join(a.value.split()).casefold() if isinstance(a.value, str) else a.value)
        for a in rdn
    )


def _dn_within(name: x509.Name, base: x509.Name) -> bool:
    name_rdns = [_rdn_key(r) for r in name.rdns]
    base_rdns = [_rdn_key(r) for r in base.rdns]
    return len(base_rdns) <= len(name_rdns) and name_rdns[: len(base_rdns)] == base_rdns


def _dns_within(name: str, constraint: str, *, excluded: bool) -> bool:
    host = name.lower().rstrip(".")
    base = constraint.lower().rstrip(".")
    if not base:
        return True
    if _dns_suffix_match(host, base):
        return True
    # A wildcard stands for many names: for an excluded subtree it is enough
    # that one of them falls inside it.
    if excluded and host.startswith("*."):
        return _dns_suffix_match(base.lstrip("."), host[2:]) or base.lstrip(".") == host[2:]
    return False


def _dns_suffix_match(host: str, base: str) -> bool:
    if base.startswith("."):
        return host.endswith(base)
    return host == base or host.endswith("." + base)


def _ip_within(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | ipaddress.IPv4Network | ipaddress.IPv6Network,
    network: ipaddress.IPv4Address | ipaddress.IPv6Address | ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> bool:
    if not isinstance(network, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return False
    if isinstance(address, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return address.version == network.version and address.subnet_of(network)  # type: ignore[arg-type]
    return address.version == network.version and address in network


def _mailbox_within(mailbox: str, constraint: str) -> bool:
    local, at, host = mailbox.rpartition("@")
    if not at:
        return False
    host = host.lower()
    if "@" in constraint:
        c_local, _, c_host = constraint.rpartition("@")
        return local == c_local and host == c_host.lower()
    if constraint.startswith("."):
        return host.endswith(constraint.lower())
    return host == constraint.lower()


def _show(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DirectoryName):
        return f"directoryName '{name.value.rfc4514_string()}'"
    return f"{type(name).__name__} '{name.value}'"
