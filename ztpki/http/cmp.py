"""CMP wiring: the CmpServer (protocols/cmp/) over an Instance's core,
credentials, transactions and CMP protection identities."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from typing import Any

from cryptography.hazmat.primitives import serialization

from storage import db
from storage.db import NotFound
from ca.issuer import UnknownAuthority
from ca.protection_identity import due_for_renewal
from protocols.cmp.server import CmpServer, RefusalRecord, Route, ServerIdentity
from ra import transactions
from ra.ratelimit import RateLimiter
from vendor_trust.credentials import BadCredential
from ztpki.config import CmpSettings
from ztpki.instance import Instance

PROTECTION_RECHECK_SECONDS = 3600.0


def cmp_server_for(instance: Instance) -> CmpServer:
    """The CMP server over this instance's core; signed replies carry the
    CMP protection certificate of the CA the path names."""
    # Per CA: the identity and when the store was last asked about it. Asked
    # again once the certificate is due for renewal, at most every RECHECK.
    identities: dict[str | None, tuple[ServerIdentity, float]] = {}
    lock = threading.Lock()

    def identity(route: Route) -> ServerIdentity:
        with lock:
            cached = identities.get(route.ca)
            if cached is not None:
                found, checked = cached
                fresh = time.monotonic() - checked < PROTECTION_RECHECK_SECONDS
                if fresh or not due_for_renewal(found.certificate, datetime.now(timezone.utc)):
                    return found
            found = cmp_protection_identity(instance, route.ca)
            identities[route.ca] = (found, time.monotonic())
            return found

    def ca_certificates(route: Route) -> tuple[bytes, ...]:
        authority = instance.cas.authority(route.ca)
        return tuple(c.public_bytes(serialization.Encoding.DER) for c in authority.chain)

    def route_of(label: str | None) -> Route | None:
        target = instance.label_target(label)
        return Route(ca=target[0], profile=target[1]) if target is not None else None

    def current_crl(route: Route) -> bytes | None:
        try:
            return instance.revocations.current_crl(instance.cas.authority(route.ca).name).der
        except (UnknownAuthority, NotFound):
            return None

    def mac_secret(reference: str, within_transaction: bool) -> bytes | None:
        # The ir may take the credential's last use; its certConf and
        # pollReq still belong to that transaction.
        try:
            return instance.credentials.mac_secret(reference, allow_used_up=within_transaction).secret
        except BadCredential:
            return None

    return CmpServer(
        decide=lambda request: instance.core.decide(request),
        result_of=lambda request_id: instance.core.result_of(request_id),
        transactions=_LazyTransactions(instance),
        mac_secret=mac_secret,
        identity=identity,
        ca_certificates=ca_certificates,
        route=route_of,
        current_crl=current_crl,
        audit=lambda record: _audit_refusal(instance, record),
        mac_guard=MacFailures(instance.limiter, instance.settings.cmp),
        unit_of_work=lambda: db.unit_of_work(instance.engine),
        policy=instance.cmp_policy,
    )


class MacFailures:
    """CMP MAC failures counted in the store (ra/ratelimit.py), per
    senderKID and per source address, so the limit holds across workers."""

    def __init__(self, limiter: RateLimiter, settings: CmpSettings) -> None:
        self.limiter = limiter
        self.per_kid = settings.mac_failures_per_kid
        self.per_address = settings.mac_failures_per_address
        self.window = settings.mac_failure_window_seconds

    def _keys(self, reference: str | None, peer: str | None) -> list[tuple[str, int, int]]:
        keys = []
        if reference:
            keys.append(("cmp-mac-failures:kid:" + reference, self.per_kid, self.window))
        if peer:
            keys.append(("cmp-mac-failures:addr:" + peer, self.per_address, self.window))
        return keys

    def refused(self, reference: str, peer: str | None) -> int | None:
        return self.limiter.over(self._keys(reference, peer))

    def failed(self, reference: str | None, peer: str | None) -> None:
        # Durable now: the refusal's unit of work commits too, but a
        # failure must count even if something after it rolls back.
        self.limiter.hit(self._keys(reference, peer), commit=True)


# Transaction states the core reached only after authenticating the sender.
_AUTHENTICATED_STATES = frozenset({
    transactions.PENDING, transactions.AWAITING_CONFIRM, transactions.CONFIRMED, transactions.CONFIRM_REJECTED,
    transactions.UNCONFIRMED, transactions.DONE,
})


def _audit_refusal(instance: Instance, record: RefusalRecord) -> None:
    instance.audit_refusal("cmp", record.body_type, record.sender, record.fail_info, {
        "text": record.text, "transaction": record.transaction_id, "peer": record.peer,
    }, authenticated=_sender_authenticated(instance, record))


def _sender_authenticated(instance: Instance, record: RefusalRecord) -> bool:
    """Whether a CMP-level refusal concerns a sender someone authenticated
    (issue 10, 6c: the others are counted, not chained).

    The server sets the sender once the protection verified. A MAC that
    verified proves knowledge of a credential's secret. A signature proves
    only possession of the key of a certificate the message itself carries:
    the core decides whether that certificate is trusted, so the sender is
    authenticated only within a transaction the core already decided for.
    A replayed message (badSenderNonce) proves nothing about who sent it.
    """
    sender = record.sender or ""
    if record.fail_info == "badSenderNonce":
        return False
    if sender.startswith("kid:"):
        return True
    if not sender.startswith("cert:") or not record.transaction_id:
        return False
    try:
        found = instance.cmp_transactions.get(bytes.fromhex(record.transaction_id), sender)
    except ValueError:
        return False
    return found is not None and found.status in _AUTHENTICATED_STATES


def cmp_protection_identity(instance: Instance, ca: str | None) -> ServerIdentity:
    """The CA's CMP protection key and certificate (ca/protection_identity.py),
    its chain for extraCerts (RFC 9483 §3.2)."""
    found = instance.cmp_protection(ca)
    chain = (found.certificate,) + found.chain
    return ServerIdentity(
        instance.token.signer(found.key_label),
        found.certificate,
        tuple(c.public_bytes(serialization.Encoding.DER) for c in chain),
    )


class _LazyTransactions:
    """instance.cmp_transactions, opened on the first CMP request."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance

    def __getattr__(self, name: str) -> Any:
        return getattr(self.instance.cmp_transactions, name)
