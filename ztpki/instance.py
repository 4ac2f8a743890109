"""Wiring an instance together: settings → store, token, CAs, revocation, OCSP."""

from __future__ import annotations

from datetime import timedelta
from functools import cached_property
from pathlib import Path

from ca.issuer import CertificateAuthorities, UrlScheme
from ca.ocsp import OcspResponder
from ca.protection_identity import ProtectionIdentity, current_protection_certificate
from ca.profiles import load_profiles
from ca.revocation import CrlPolicy, ReconcileAction, Revocations
import ra.db
import vendor_trust.db
from storage.db import make_engine
from ca.store import Store
from sqlalchemy import Engine
from hsm import Token, TokenSealer
from protocols.cmp.bodies import FailInfo
from protocols.cmp.context import CmpPolicy
from protocols.cmp.refusals import fail_info_name
from ra.audit import AuditLog
from ra.noise import NoiseLog, NoisePolicy
from ra.core import CorePolicy, EnrolmentCore
from ra.pending import PendingRequests
from ra.ratelimit import RateLimiter
from ra.transactions import CmpTransactions
from vendor_trust.anchors import VendorTrust
from vendor_trust.credentials import Credentials
from vendor_trust.pins import Pins
from vendor_trust.registry import DeviceRegistry
from ztpki.config import ConfigError, Settings, load_settings

SECRETS_KEY_LABEL = "ztpki-secrets"

# The refusal codes of the protocols' own refusals, besides the core's
# RejectReasons: the closed set audit_noise keys by (ra/noise.py). EST's are
# the reasons of protocols/est's EstRefusals (tests/ra/test_noise.py reads
# them from the source, so a new one cannot be missed).
EST_REFUSAL_REASONS = frozenset({
    "bad_request", "bad_credential", "no_credentials", "channel_binding", "not_authorized", "unknown_label",
    "unknown_operation", "wrong_method", "too_large", "system_failure", "tls_required", "untrusted_certificate",
})
NOISE_REASONS = frozenset(fail_info_name(bit) for bit in FailInfo) | EST_REFUSAL_REASONS


class _LazySealer:
    def __init__(self, instance: "Instance") -> None:
        self.instance = instance

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        return self.instance.secret_sealer.seal(plaintext, aad)

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        return self.instance.secret_sealer.unseal(blob, aad)


class Instance:
    """One ztpki instance (a home directory). Parts are built on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @classmethod
    def open(cls, home: Path) -> "Instance":
        return cls(load_settings(home))

    @cached_property
    def engine(self) -> Engine:
        """The one database engine of this process, every package's tables migrated."""
        engine = make_engine(
            self.settings.database_url(), sqlite_synchronous=self.settings.sqlite_synchronous
        )
        Store(engine).migrate()
        vendor_trust.db.migrate(engine)
        ra.db.migrate(engine)
        return engine

    @cached_property
    def store(self) -> Store:
        return Store(self.engine)

    @cached_property
    def token(self) -> Token:
        return Token(self.settings.token_config())

    @cached_property
    def secret_sealer(self) -> TokenSealer:
        """The token's AES key that seals enrolment secrets stored in the database."""
        label = SECRETS_KEY_LABEL
        if not self.token.has_secret_key(label):
            raise ConfigError(
                f"the token has no secret key {label!r} for sealing enrolment secrets "
                "(`ztpki init` creates it)"
            )
        return TokenSealer(self.token, label)

    @cached_property
    def cas(self) -> CertificateAuthorities:
        return CertificateAuthorities(
            self.store,
            self.token,
            load_profiles(self.settings.profiles_path),
            UrlScheme(self.settings.base_url),
            default_ca=self.settings.default_ca,
        )

    @cached_property
    def revocations(self) -> Revocations:
        return Revocations(
            self.cas,
            CrlPolicy(
                validity=timedelta(hours=self.settings.crl_validity_hours),
                refresh=timedelta(minutes=self.settings.crl_refresh_minutes),
            ),
            on_reconcile=self.audit_reconcile,
        )

    def audit_reconcile(self, action: ReconcileAction) -> None:
        """Audit a crash repair; called inside the transaction making it (issue 18)."""
        self.audit.append(
            actor="ztpki",
            protocol="maintenance",
            operation=action.kind,
            device=action.device,
            evidence=[],
            outcome="reconciled",
            reason=action.reason,
            serial=format(action.serial, "x") if action.serial is not None else None,
            details={"ca": action.ca, **action.details},
        )

    @cached_property
    def ocsp(self) -> OcspResponder:
        return OcspResponder(
            self.cas,
            validity=timedelta(minutes=self.settings.ocsp_validity_minutes),
            refresh=timedelta(seconds=self.settings.ocsp_refresh_seconds),
        )

    def audit_refusal(self, protocol: str, operation: str, identity: str | None, reason: str,
                      details: dict[str, object], *, authenticated: bool = False) -> None:
        """Audit a request a protocol refused before the core saw it (bad
        protection, malformed body, no credentials). Unless the protocol had
        authenticated the sender, it is counted, not chained (issue 10, 6c)."""
        if not authenticated:
            peer = details.get("peer")
            self.audit.note_noise(protocol=protocol, source=peer if isinstance(peer, str) else None, reason=reason,
                                  detail={"operation": operation, "identity": identity, **details})
            return
        self.audit.append(
            actor="anonymous",
            protocol=protocol,
            operation=operation,
            evidence=[identity] if identity else [],
            outcome="rejected",
            reason=reason,
            details=details,
        )

    def label_target(self, label: str | None) -> tuple[str | None, str | None] | None:
        """(issuing CA, profile) a protocol path label names (RFC 9483 §6.1,
        RFC 7030 §3.2.2): an issuing CA's name or a profile's; (None, None)
        without a label; None for a label that names neither."""
        if label is None:
            return None, None
        if any(record.name == label for record in self.store.list_authorities() if record.kind == "issuing"):
            return label, None
        if label in self.cas.profiles:
            return None, label
        return None

    def cmp_protection(self, ca: str | None = None) -> ProtectionIdentity:
        """The CMP protection key and certificate of CA `ca` (the default CA),
        made on first use, renewed near expiry; the store holds the truth and
        HOME/cmp-protection-<ca>.pem is a copy for clients (-srvcert)."""
        home = self.settings.home
        return current_protection_certificate(self.cas, self.store, self.token, ca, lock_dir=home, pem_dir=home)

    # -- the enrolment core and what it stands on -----------------------------

    @cached_property
    def trust(self) -> VendorTrust:
        return VendorTrust(self.engine)

    @cached_property
    def registry(self) -> DeviceRegistry:
        return DeviceRegistry(self.engine)

    @cached_property
    def credentials(self) -> Credentials:
        # The sealer is looked up when a MAC secret is first sealed or unsealed.
        return Credentials(self.engine, _LazySealer(self))

    @cached_property
    def pins(self) -> Pins:
        return Pins(self.engine)

    @cached_property
    def audit(self) -> AuditLog:
        ra = self.settings.ra
        policy = NoisePolicy(
            interval_seconds=ra.noise_interval_seconds,
            max_sources=ra.noise_sources_per_interval,
            retention_days=ra.noise_retention_days,
        )
        return AuditLog(self.engine, NoiseLog(self.engine, policy, reasons=NOISE_REASONS))

    @cached_property
    def pending(self) -> PendingRequests:
        return PendingRequests(self.engine)

    @cached_property
    def limiter(self) -> RateLimiter:
        return RateLimiter(self.engine)

    @cached_property
    def core(self) -> EnrolmentCore:
        ra = self.settings.ra
        return EnrolmentCore(
            cas=self.cas,
            revocations=self.revocations,
            trust=self.trust,
            registry=self.registry,
            credentials=self.credentials,
            pins=self.pins,
            audit=self.audit,
            pending=self.pending,
            limiter=self.limiter,
            policy=CorePolicy(
                per_device_limit=ra.per_device_limit,
                per_device_window=ra.per_device_window_seconds,
                global_limit=ra.global_limit,
                global_window=ra.global_window_seconds,
                poll_interval=ra.poll_interval_seconds,
            ),
        )

    @cached_property
    def cmp_transactions(self) -> CmpTransactions:
        """CMP transactions and nonces in the store; a never-confirmed certificate is revoked."""

        def revoke(serial: int, reason: str, ca: str | None) -> None:
            self.revocations.revoke(serial, reason, ca=ca)

        cmp = self.settings.cmp
        return CmpTransactions(
            self.engine,
            revoke,
            confirm_wait=timedelta(seconds=cmp.confirm_wait_seconds),
            audit=self.audit,
            # A replayed message is refused by nonce until its messageTime
            # falls outside the tolerance on either side of the clock.
            nonce_memory=max(timedelta(minutes=30), timedelta(seconds=2 * cmp.message_time_tolerance_seconds)),
        )

    @cached_property
    def cmp_policy(self) -> CmpPolicy:
        """The CMP server's policy from [cmp] (RFC 9483 §3.1, §4.1.1, §5.2)."""
        cmp = self.settings.cmp
        return CmpPolicy(
            message_time_tolerance=timedelta(seconds=cmp.message_time_tolerance_seconds),
            allow_implicit_confirm=cmp.allow_implicit_confirm,
            allow_unprotected_genm=cmp.allow_unprotected_genm,
            max_mac_iterations=cmp.max_mac_iterations,
            trusted_ras=cmp.trusted_ras(self.settings.home),
        )

    def close(self) -> None:
        if "token" in self.__dict__:
            self.token.close()
        if "engine" in self.__dict__:
            self.engine.dispose()
