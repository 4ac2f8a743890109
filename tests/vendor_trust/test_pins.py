"""One-time PINs: single use, expiry, lock-out, binding to the device; a race
of eight workers on a real PostgreSQL; a model-based property test."""

from __future__ import annotations

import multiprocessing
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select, update

from storage.db import make_engine, now
from vendor_trust import pins as pins_module
from vendor_trust.db import migrate
from vendor_trust.hashing import ScryptCost, verify_secret
from vendor_trust.pins import ALPHABET, MAX_FAILURES, PinRejected, Pins, normalise_pin
from vendor_trust.schema import pins as pins_table

FAST = ScryptCost(log_n=4, r=8, p=1)  # tests only: the default costs ~50 ms a check
FASTEST = ScryptCost(log_n=1, r=1, p=1)  # for the property test's many redemptions


def open_engine(url: str) -> Engine:
    engine = make_engine(url, sqlite_synchronous="NORMAL")
    migrate(engine)
    return engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = open_engine(f"sqlite:///{tmp_path / 'pins.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def pins(engine: Engine) -> Pins:
    return Pins(engine, cost=FAST)


def reason(pins: Pins, device: str, pin: str) -> str:
    try:
        pins.redeem(device, pin)
    except PinRejected as exc:
        return exc.reason
    return "ok"


def test_a_pin_is_random_readable_and_stored_only_as_a_hash(engine: Engine) -> None:
    pins = Pins(engine)  # the default cost, as in production
    pin = pins.create("SN-1")
    groups = pin.split("-")
    assert [len(g) for g in groups] == [4, 4, 4] and set("".join(groups)) <= set(ALPHABET)
    assert pin != pins.create("SN-2")
    with engine.connect() as conn:
        stored = conn.execute(select(pins_table.c.pin_hash)).scalars().all()
    assert all(h.startswith("scrypt$ln=14,r=8,p=1$") and pin.replace("-", "") not in h for h in stored)
    info = pins.list("SN-1")[0]
    assert (info.state, info.failures, info.used_at) == ("active", 0, None)
    assert timedelta(days=6, hours=23) < info.expires_at - info.created_at <= timedelta(days=7)
    assert not hasattr(info, "pin_hash")
    pins.redeem("SN-1", pin)


def test_a_pin_is_accepted_once_however_it_is_typed(pins: Pins) -> None:
    pin = pins.create("SN-1")
    typed = pin.replace("-", " ").lower().replace("0", "o").replace("1", "l")
    assert normalise_pin(typed) == pin.replace("-", "")
    assert reason(pins, "SN-1", typed) == "ok"
    assert reason(pins, "SN-1", pin) == "used"
    info = pins.list("SN-1")[0]
    assert info.state == "used" and info.used_at is not None


def test_an_expired_pin_is_refused(pins: Pins, engine: Engine) -> None:
    pin = pins.create("SN-1", ttl=timedelta(minutes=5))
    with engine.begin() as conn:
        conn.execute(update(pins_table).values(expires_at=now() - timedelta(seconds=1)))
    assert reason(pins, "SN-1", pin) == "expired"
    assert pins.list()[0].shown_state(now()) == "expired"


def test_five_wrong_tries_lock_the_pin_even_for_the_right_one(pins: Pins) -> None:
    pin = pins.create("SN-1")
    for attempt in range(1, MAX_FAILURES + 1):
        with pytest.raises(PinRejected) as caught:
            pins.redeem("SN-1", "WRONG-PIN-0000")
        assert caught.value.reason == "wrong"
        assert caught.value.locked == (attempt == MAX_FAILURES)
    assert reason(pins, "SN-1", pin) == "locked"
    assert (pins.list()[0].state, pins.list()[0].failures) == ("locked", MAX_FAILURES)


def test_a_pin_is_bound_to_its_device(pins: Pins) -> None:
    pin_a = pins.create("SN-A")
    pin_b = pins.create("SN-B")
    assert reason(pins, "SN-A", pin_b) == "wrong"
    assert reason(pins, "SN-C", pin_a) == "no_pin"
    assert reason(pins, "SN-B", pin_b) == "ok"
    assert reason(pins, "SN-A", pin_a) == "ok"


def test_a_device_without_a_pin_costs_a_full_hash_check(pins: Pins, monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[str] = []

    def spy(secret: bytes, encoded: str) -> bool:
        checked.append(encoded)
        return verify_secret(secret, encoded)

    monkeypatch.setattr(pins_module, "verify_secret", spy)
    assert reason(pins, "SN-1", "ABCD-EFGH-JKMN") == "no_pin"
    assert len(checked) == 1 and checked[0].startswith("scrypt$ln=4,r=8,p=1$")


def test_a_new_pin_replaces_the_old_and_revoking_ends_it(pins: Pins) -> None:
    old = pins.create("SN-1")
    new = pins.create("SN-1")
    assert [p.state for p in pins.list("SN-1")] == ["revoked", "active"]
    assert reason(pins, "SN-1", old) == "wrong"
    assert pins.revoke("SN-1") == 1
    assert pins.revoke("SN-1") == 0
    assert reason(pins, "SN-1", new) == "revoked"
    third = pins.create("SN-1")
    assert pins.revoke(pin_id=pins.list("SN-1")[-1].id) == 1
    assert reason(pins, "SN-1", third) == "revoked"
    with pytest.raises(ValueError):
        pins.revoke()


def test_silly_input_is_refused_or_just_wrong(pins: Pins) -> None:
    with pytest.raises(ValueError):
        pins.create("")
    with pytest.raises(ValueError):
        pins.create("SN-1", ttl=timedelta(0))
    pins.create("SN-1")
    assert reason(pins, "SN-1", "") == "wrong"
    assert reason(pins, "SN-1", "é" * 10_000) == "wrong"


# -- concurrency on PostgreSQL -----------------------------------------------------------


def _redeem_in_worker(url: str, device: str, pin: str, start: Any, results: Any) -> None:
    engine = make_engine(url)
    try:
        pins = Pins(engine, cost=FAST)
        with engine.connect():
            pass  # connect before the start line, so that all race the redemption itself
        start.wait(timeout=120)
        results.put(reason(pins, device, pin))
    finally:
        engine.dispose()


def test_eight_workers_redeeming_the_same_pin_at_once_succeed_exactly_once(postgres_db_url: str) -> None:
    engine = open_engine(postgres_db_url)
    try:
        pin = Pins(engine, cost=FAST).create("SN-1")
    finally:
        engine.dispose()
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(8)
    results = context.Queue()
    workers = [context.Process(target=_redeem_in_worker, args=(postgres_db_url, "SN-1", pin, start, results))
               for _ in range(8)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(30)
    assert sorted(outcomes) == ["ok"] + ["used"] * 7


# -- property: no sequence of actions accepts a PIN twice ------------------------------------


@dataclass
class _Model:
    """What the PINs of one device should be: the newest PIN is the live one."""

    pin: str | None = None
    state: str = "active"
    failures: int = 0


_ACTIONS = st.lists(
    st.tuples(
        # garbage twice: enough wrong tries in a row to reach the lock-out
        st.sampled_from(["create", "redeem-current", "redeem-old", "redeem-other", "redeem-garbage", "redeem-garbage", "revoke"]),
        st.integers(0, 1),  # which of two devices
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=_ACTIONS)
def test_no_sequence_of_actions_accepts_a_pin_twice_or_a_pin_it_should_not(engine: Engine, actions: list[tuple[str, int]]) -> None:
    pins = Pins(engine, cost=FASTEST)
    run = uuid.uuid4().hex[:8]  # the same database for every example: fresh devices each time
    devices = [f"{run}-A", f"{run}-B"]
    models = [_Model(), _Model()]
    issued: list[list[str]] = [[], []]
    accepted: list[str] = []
    # Both devices start with a PIN (no_pin has its own test) so that the
    # examples spend their actions on using, guessing and revoking.
    for action, index in [("create", 0), ("create", 1), *actions]:
        device, model = devices[index], models[index]
        if action == "create":
            pin = pins.create(device)
            issued[index].append(pin)
            model.pin, model.state, model.failures = pin, "active", 0
            continue
        if action == "revoke":
            pins.revoke(device)
            if model.pin is not None and model.state == "active":
                model.state = "revoked"
            continue
        candidates = {
            "redeem-current": issued[index][-1:],
            "redeem-old": issued[index][:-1],
            "redeem-other": issued[1 - index],
            "redeem-garbage": ["0000-0000-0000"],
        }[action]
        if not candidates:
            continue
        tried = candidates[0]
        outcome = reason(pins, device, tried)
        if model.pin is None:
            expected = "no_pin"
        elif model.state != "active":
            expected = model.state
        elif tried == model.pin:
            expected, model.state = "ok", "used"
        else:
            model.failures += 1
            expected = "wrong"
            if model.failures >= MAX_FAILURES:
                model.state = "locked"
        assert outcome == expected, (action, device, tried)
        event(f"redeem: {outcome}")  # --hypothesis-show-statistics shows what was reached
        if outcome == "ok":
            assert tried not in accepted
            accepted.append(tried)
