"""Every bundled shared ledger keeps the one contract of ``sg.Ledger``: the state machine
of ``tests/ledger_contract.py``, and expiry and single-flight, run against the SQLite
ledger on a real file and the Redis ledger on a real redis-server."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis.stateful import run_state_machine_as_test

import spendguard as sg
from spendguard.sqlite import SQLiteLedger
from spendguard.testing import RedisServer
from tests.ledger_contract import CONTRACT_SETTINGS, LedgerContract, Wallet
from tests.redis_server import REDIS_SERVER

try:
    from spendguard.redis import RedisLedger
except ImportError:  # pragma: no cover - the redis extra is part of the test extras
    RedisLedger = None  # type: ignore[assignment,misc]

LedgerFactory = Callable[..., sg.Ledger]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer | None]:
    """One redis-server for the module, when redis-server and the package are there."""
    if REDIS_SERVER is None or RedisLedger is None:
        yield None
        return
    with RedisServer() as running:
        yield running


@pytest.fixture(params=["sqlite", "redis"])
def make_ledger(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer | None
) -> Iterator[LedgerFactory]:
    """Builds ledgers of one kind on one store (a file, a server), closed after the test."""
    opened: list[SQLiteLedger | RedisLedger] = []
    if request.param == "redis" and redis_server is None:
        if os.environ.get("SPENDGUARD_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server or the redis package is missing", pytrace=False)
        pytest.skip("needs redis-server and the redis package")

    def make(**options: float) -> sg.Ledger:
        ledger: SQLiteLedger | RedisLedger
        if request.param == "sqlite":
            ledger = SQLiteLedger(tmp_path / "ledger.db", **options)
        else:
            assert redis_server is not None
            # A new account waits three heartbeats before its first admission (it cannot
            # be told from one whose state was lost): a short beat keeps the run fast.
            options.setdefault("heartbeat", 0.02)
            ledger = RedisLedger.from_url(redis_server.url, **options)
        opened.append(ledger)
        return ledger

    yield make
    for ledger in opened:
        ledger.close()


def test_the_ledger_contract(make_ledger: LedgerFactory) -> None:
    """Random interleavings of every ledger operation agree with the model at every step."""
    ledger = make_ledger()
    run_state_machine_as_test(lambda: LedgerContract(ledger), settings=CONTRACT_SETTINGS)


def test_an_expired_hold_frees_its_amount(make_ledger: LedgerFactory) -> None:
    """A hold never ended stops counting after its hold_ttl, and the balance is then looked
    up again (its call may have spent)."""
    ledger = make_ledger()
    wallet = Wallet(f"contract:{uuid.uuid4().hex}")
    options = {"floor": Decimal(0), "ttl": 3600.0, "refresh_interval": 3600.0}
    taken = ledger.admit(
        wallet.account_id, Decimal(8), hold_ttl=0.3, lookup=wallet.check, **options
    )
    assert taken.admitted
    assert not ledger.admit(
        wallet.account_id, Decimal(3), hold_ttl=None, lookup=wallet.check, **options
    ).admitted
    time.sleep(0.4)
    again = ledger.admit(
        wallet.account_id, Decimal(3), hold_ttl=None, lookup=wallet.check, **options
    )
    assert again.admitted
    assert again.held == 0
    assert wallet.lookups == 2


def test_eight_ledgers_make_one_slow_lookup(make_ledger: LedgerFactory) -> None:
    """8 threads, each on its own ledger object, arriving on no snapshot: one lookup, and
    everyone decides from its answer."""
    ledgers = [make_ledger() for _ in range(8)]
    wallet = _SlowWallet(f"contract:{uuid.uuid4().hex}")
    barrier = threading.Barrier(8)

    def work(ledger: sg.Ledger) -> sg.Admission:
        barrier.wait()
        return ledger.admit(
            wallet.account_id,
            Decimal(1),
            floor=Decimal(0),
            hold_ttl=60.0,
            ttl=3600.0,
            refresh_interval=3600.0,
            lookup=wallet.check,
        )

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(work, ledgers))
    assert wallet.lookups == 1
    assert all(answer.admitted for answer in answers)
    assert sum(answer.check is not None for answer in answers) == 1
    for ledger, answer in zip(ledgers, answers, strict=True):
        ledger.end(wallet.account_id, answer.hold_id, None)


def test_a_failed_lookup_is_shared_with_the_waiters(make_ledger: LedgerFactory) -> None:
    """When the one lookup fails, the ledgers that waited for it raise its error too."""
    ledgers = [make_ledger() for _ in range(8)]
    wallet = _SlowWallet(f"contract:{uuid.uuid4().hex}")
    wallet.failing = True
    barrier = threading.Barrier(8)

    def work(ledger: sg.Ledger) -> object:
        barrier.wait()
        try:
            return ledger.admit(
                wallet.account_id,
                Decimal(1),
                floor=Decimal(0),
                hold_ttl=None,
                ttl=3600.0,
                refresh_interval=3600.0,
                lookup=wallet.check,
            )
        except sg.ProviderError as exc:
            return exc

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(work, ledgers))
    assert all(isinstance(answer, sg.BalanceUnavailable) for answer in answers)
    assert wallet.lookups == 1


class _SlowWallet(Wallet):
    """A wallet whose lookup takes a while, so that others arrive meanwhile."""

    def check(self, amount: Decimal) -> sg.Check:
        time.sleep(0.2)
        return super().check(amount)
