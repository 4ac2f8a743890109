"""Properties of the core over random sequences of requests and admin actions:
no certificate without valid evidence for that device, a PIN never accepted
twice (also concurrently), a blocked device never gets a certificate."""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from ra.admin import block_device, unblock_device
from ra.core import CorePolicy
from ra.requests import Issued, OneTimePin, Rejected, VendorCertificate
from corehelpers import World, enrolment, make_world

WORLD: dict[str, World] = {}


@pytest.fixture(scope="module", autouse=True)
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    WORLD["w"] = make_world(tmp_path_factory.mktemp("props"))
    # Rate limits are tested elsewhere; here every refusal must have a reason of substance.
    WORLD["w"].instance.core.policy = CorePolicy(per_device_limit=100_000, global_limit=100_000)
    return WORLD["w"]


class CoreMachine(RuleBasedStateMachine):
    devices = Bundle("devices")

    def __init__(self) -> None:
        super().__init__()
        self.world = WORLD["w"]
        self.core = self.world.instance.core
        self.blocked: set[str] = set()
        self.pins: dict[str, list[str]] = {}  # device → PINs created, unused as far as we know
        self.accepted_pins: list[str] = []
        self.issued_to: dict[str, int] = {}

    @rule(target=devices)
    def register(self) -> str:
        serial = self.world.device(profile="phone")
        self.pins[serial] = []
        return serial

    @rule(device=devices)
    def create_pin(self, device: str) -> None:
        self.pins[device].append(self.world.instance.pins.create(device))

    @rule(device=devices)
    def block(self, device: str) -> None:
        block_device(self.core, device, "keyCompromise", admin="prop")
        self.blocked.add(device)

    @rule(device=devices)
    def unblock(self, device: str) -> None:
        unblock_device(self.core, device, admin="prop")
        self.blocked.discard(device)

    @rule(device=devices, trusted=st.booleans())
    def enrol_with_vendor_certificate(self, device: str, trusted: bool) -> None:
        pki = self.world.vendor if trusted else self.world.stranger
        decision = self.core.decide(enrolment(VendorCertificate(self.world.idevid(device, pki=pki))))
        if isinstance(decision, Issued):
            assert trusted, "issued on an untrusted vendor certificate"
            assert device not in self.blocked, "issued to a blocked device"
            assert decision.device == device
        else:
            assert isinstance(decision, Rejected)
            assert not trusted or device in self.blocked, decision

    @rule(device=devices, owner=devices, which=st.integers(0, 3), garble=st.booleans())
    def enrol_with_pin(self, device: str, owner: str, which: int, garble: bool) -> None:
        candidates = self.pins[owner]
        pin = candidates[which % len(candidates)] if candidates else "NOPIN0000000"
        if garble:
            pin = pin[::-1]
        decision = self.core.decide(enrolment(OneTimePin(pin), claimed=device))
        if isinstance(decision, Issued):
            assert device == owner and not garble and pin in candidates, "issued on a PIN that is not this device's"
            assert device not in self.blocked, "issued to a blocked device"
            assert pin not in self.accepted_pins, "a PIN accepted twice"
            self.accepted_pins.append(pin)
            self.issued_to[device] = self.issued_to.get(device, 0) + 1

    @invariant()
    def blocked_devices_hold_no_valid_certificate(self) -> None:
        for device in self.blocked:
            for record in self.world.instance.store.certificates(device_id=device):
                assert record.status != "valid", f"{device} is blocked but {record.serial_hex} is valid"


CoreMachine.TestCase.settings = settings(
    max_examples=12, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TestCoreMachine = CoreMachine.TestCase


def test_a_pin_is_accepted_once_under_concurrent_requests(world: World) -> None:
    serial = world.device(profile="phone")
    pin = world.instance.pins.create(serial)
    results: list[object] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def attempt() -> None:
        start.wait()
        decision = world.instance.core.decide(enrolment(OneTimePin(pin), claimed=serial))
        with lock:
            results.append(decision)

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(isinstance(r, Issued) for r in results) == 1, results
    assert len(list(world.instance.store.certificates(device_id=serial))) == 1

