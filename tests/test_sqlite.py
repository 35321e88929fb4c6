"""The SQLite ledger on real files: processes sharing one balance, a killed holder, the
heartbeat, the ledger's range and clock, and files that cannot be used."""

from __future__ import annotations

import asyncio
import contextlib
import decimal
import logging
import multiprocessing
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import spendguard as sg
from spendguard.sqlite import MAX_AMOUNT, SQLiteLedger, _machine_clock
from spendguard.testing import ProviderSimulator
from tests.conftest import FakeClock
from tests.redis_server import kill
from tests.sqlite_workers import hold_forever, spend_worker

H3D_BALANCE = "GET /api/v2/check_balance"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Where the test's database file goes."""
    return tmp_path / "spend.db"


@pytest.fixture
def ledger(path: Path) -> Iterator[SQLiteLedger]:
    """A SQLiteLedger on a fresh file."""
    with SQLiteLedger(path, max_hold_ttl=5.0) as opened:
        yield opened


def _held(path: Path) -> Decimal:
    with contextlib.closing(sqlite3.connect(path)) as db:
        row = db.execute("SELECT COALESCE(SUM(amount), 0) FROM spendguard_holds").fetchone()
    return Decimal(row[0]).scaleb(-9)


# -- the basics ----------------------------------------------------------------------------


def test_guard_on_a_sqlite_ledger_holds_settles_and_refuses(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, ledger: SQLiteLedger, path: Path
) -> None:
    """A spend holds in the file, settles into spending, and a call that does not fit is
    refused, after one lookup."""
    guard = sg.SpendGuard(hyper3d, ledger=ledger)
    with guard.spend(4) as hold:
        assert _held(path) == 4
        assert guard.available() == 6
    assert hold.state == "settled"
    assert _held(path) == 0
    assert guard.balance() == 6
    with pytest.raises(sg.InsufficientCredits) as refused:
        guard.require(7)
    assert refused.value.available == 6
    assert sim.count(H3D_BALANCE) == 1


def test_two_ledgers_on_one_file_share_holds(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, path: Path
) -> None:
    """Guards on two ledgers on the same file see each other's holds and snapshot."""
    with SQLiteLedger(path) as first, SQLiteLedger(path) as second:
        a = sg.SpendGuard(hyper3d, ledger=first)
        b = sg.SpendGuard(hyper3d, ledger=second)
        with a.spend(8):
            assert not b.check(3).sufficient
            assert b.check(2).sufficient
    assert sim.count(H3D_BALANCE) == 1


def test_the_key_is_never_stored(sim: ProviderSimulator, hyper3d: sg.Hyper3D, path: Path) -> None:
    """The file (and its write-ahead log) holds the account fingerprint, never the key."""
    with SQLiteLedger(path) as ledger:
        guard = sg.SpendGuard(hyper3d, ledger=ledger)
        with guard.spend(1):
            stored = b"".join(p.read_bytes() for p in path.parent.iterdir() if p.is_file())
    assert sim.api_key.encode() not in stored
    assert hyper3d.account_id.encode() in stored


def test_async_tasks_share_the_file(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, path: Path
) -> None:
    """30 tasks spending 1 each from 10 through the ledger: exactly 10 run."""
    ran: list[int] = []
    with SQLiteLedger(path) as ledger:
        guard = sg.SpendGuard(hyper3d, ledger=ledger)

        async def attempt(i: int) -> None:
            async with guard.spend(1):
                ran.append(i)
                await asyncio.sleep(0.005)

        async def main() -> list[object]:
            return await asyncio.gather(*(attempt(i) for i in range(30)), return_exceptions=True)

        results = asyncio.run(main())
    assert len(ran) == 10
    assert sum(isinstance(r, sg.InsufficientCredits) for r in results) == 20
    assert _held(path) == 0


def test_ledger_is_a_ledger_with_a_plain_repr(path: Path) -> None:
    """SQLiteLedger satisfies sg.Ledger; its repr names the file and the policy."""
    with SQLiteLedger(path, on_ledger_error="local") as ledger:
        assert isinstance(ledger, sg.Ledger)
        assert repr(ledger) == f"SQLiteLedger({str(path)!r}, on_ledger_error='local')"


@pytest.mark.parametrize(
    "options",
    [
        {"on_ledger_error": "ignore"},
        {"max_hold_ttl": 0},
        {"busy_timeout": -1},
        {"lock_timeout": float("inf")},
        {"clock": 3},
    ],
)
def test_bad_options_are_configuration_errors(path: Path, options: dict[str, Any]) -> None:
    """An option out of range is a ConfigurationError."""
    with pytest.raises(sg.ConfigurationError):
        SQLiteLedger(path, **options)


# -- amounts and time ----------------------------------------------------------------------


def test_amounts_beyond_the_range_err_on_the_safe_side(path: Path, clock: FakeClock) -> None:
    """A balance above MAX_AMOUNT counts as MAX_AMOUNT, a cost above it is refused, and a
    charge above it still ends its hold and uses the whole balance up."""
    wallet = _Wallet(MAX_AMOUNT * 5)
    with SQLiteLedger(path, clock=clock) as ledger:
        guard = sg.SpendGuard(wallet, ledger=ledger, clock=clock)
        assert guard.balance() == MAX_AMOUNT
        assert not guard.check(MAX_AMOUNT + 1).sufficient
        with guard.spend(1) as hold:
            hold.settle(MAX_AMOUNT * 2)
        assert _held(path) == 0
        assert not guard.check(Decimal("0.000000001")).sufficient


def test_amounts_finer_than_the_scale_are_rounded_up(path: Path, clock: FakeClock) -> None:
    """A cost finer than 10^-9 of the unit is held rounded up, never refused."""
    wallet = _Wallet(Decimal(1))
    with SQLiteLedger(path, clock=clock) as ledger:
        guard = sg.SpendGuard(wallet, ledger=ledger, clock=clock)
        with guard.spend(Decimal("0.0000000001")):
            assert _held(path) == Decimal("0.000000001")
        assert guard.balance() == Decimal("0.999999999")


def test_the_ledger_clock_drives_ttl_and_expiry(path: Path, clock: FakeClock) -> None:
    """With an injected clock, the snapshot goes stale and an abandoned hold expires when
    the clock says so, not before."""
    wallet = _Wallet(Decimal(10))
    with SQLiteLedger(path, clock=clock) as ledger:
        guard = sg.SpendGuard(
            wallet, ttl=60, refresh_interval=60, hold_ttl=30, ledger=ledger, clock=clock
        )
        hold = guard.spend(8).__enter__()
        clock.advance(29)
        assert not guard.check(3).sufficient
        assert wallet.lookups == 1
        clock.advance(2)  # the hold is past its hold_ttl
        assert guard.check(3).sufficient
        assert wallet.lookups == 2  # the expiry made the snapshot untrusted
        clock.advance(61)
        assert guard.check(3).sufficient
        assert wallet.lookups == 3
        hold.release()


@pytest.mark.parametrize("start", [1000.0, 1e12])
def test_times_from_another_boot_are_forgotten(path: Path, start: float) -> None:
    """A file last used with another boot's clock (here: a fake one, which stores no boot)
    drops its holds and its snapshot when the machine's clock opens it, whether the fake
    time is behind or far ahead of the machine's."""
    clock = FakeClock(start)
    wallet = _Wallet(Decimal(10))
    with SQLiteLedger(path, clock=clock) as before:
        guard = sg.SpendGuard(wallet, ledger=before, clock=clock)
        guard.spend(8).__enter__()
    assert _held(path) == 8
    with SQLiteLedger(path) as after:
        guard = sg.SpendGuard(wallet, ledger=after, clock=clock)
        assert guard.check(10).sufficient
    assert _held(path) == 0
    assert wallet.lookups == 2


def test_the_machine_clock_is_shared_by_processes() -> None:
    """On Linux the ledger's clock is CLOCK_BOOTTIME with the boot id: another process
    reads the same time."""
    read, boot = _machine_clock()
    if not boot.startswith("boottime:"):
        pytest.skip("CLOCK_BOOTTIME is Linux-only")
    code = "import time; print(time.clock_gettime(time.CLOCK_BOOTTIME))"
    before = read()
    other = float(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        ).stdout
    )
    assert before <= other <= read()


def test_a_live_hold_outlives_max_hold_ttl(path: Path) -> None:
    """While its process lives, a hold without hold_ttl stays held long past max_hold_ttl:
    the heartbeat renews it; once ended it is gone."""
    wallet = _Wallet(Decimal(10))
    with SQLiteLedger(path, max_hold_ttl=0.6) as ledger, SQLiteLedger(path) as other:
        holder = sg.SpendGuard(wallet, hold_ttl=None, ledger=ledger)
        watcher = sg.SpendGuard(wallet, ledger=other)
        with holder.spend(8):
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                assert not watcher.check(3).sufficient
                time.sleep(0.05)
        assert _held(path) == 0


# -- processes -----------------------------------------------------------------------------


def test_four_processes_spend_exactly_the_balance(sim: ProviderSimulator, path: Path) -> None:
    """4 spawned processes x 50 guarded generations (0.5 each) against 30 credits: exactly
    60 run, the balance never goes negative, and one lookup per TTL window serves all."""
    sim.hyper3d_balance = 30
    ttl = 30.0
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    results: Any = ctx.Queue()
    workers = [
        ctx.Process(
            target=spend_worker,
            kwargs={
                "path": str(path),
                "sim_url": sim.url,
                "api_key": sim.api_key,
                "calls": 50,
                "ttl": ttl,
                "start": start,
                "results": results,
            },
        )
        for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    began = time.monotonic()
    start.set()
    outcomes = [results.get(timeout=90) for _ in workers]
    elapsed = time.monotonic() - began
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    results.close()
    results.join_thread()
    assert sum(admitted for admitted, _, _ in outcomes) == 60
    assert sum(refused for _, refused, _ in outcomes) == 140
    assert len(sim.charges) == 60
    assert min(charge.balance_after for charge in sim.charges) >= 0
    assert sim.hyper3d_balance == 0
    assert sim.count(H3D_BALANCE) <= elapsed / ttl + 1
    assert sum(lookups for _, _, lookups in outcomes) == sim.count(H3D_BALANCE)
    assert _held(path) == 0


def test_one_lookup_per_ttl_window_under_load(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, path: Path
) -> None:
    """8 guards on 8 ledgers (8 connections) checking for a second with ttl=0.2 make at
    most one slow lookup per TTL window between them."""
    ledgers = [SQLiteLedger(path) for _ in range(8)]
    guards = [sg.SpendGuard(hyper3d, ttl=0.2, ledger=one) for one in ledgers]
    sim.slow(H3D_BALANCE, 0.05, times=100)
    start = time.monotonic()

    def work(guard: sg.SpendGuard) -> int:
        checks = 0
        while time.monotonic() - start < 1.0:
            assert guard.check("0.1").sufficient
            checks += 1
        return checks

    with ThreadPoolExecutor(8) as pool:
        checks = sum(pool.map(work, guards))
    elapsed = time.monotonic() - start
    assert checks > 100
    assert 2 <= sim.count(H3D_BALANCE) <= elapsed / 0.2 + 1
    for one in ledgers:
        one.close()


def test_killed_holder_is_freed_after_expiry_not_before(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, path: Path
) -> None:
    """kill -9 of a process holding credit: held while it lives (past max_hold_ttl), held
    after the kill until the expiry its last renewal set, free from then on."""
    sim.hyper3d_balance = 1
    max_hold_ttl = 2.0  # renewed every 0.67 s: a loaded machine may delay a beat a little
    ctx = multiprocessing.get_context("spawn")
    held = ctx.Event()
    worker = ctx.Process(
        target=hold_forever,
        args=(str(path), sim.url, sim.api_key, "1"),
        kwargs={"max_hold_ttl": max_hold_ttl, "held": held},
    )
    worker.start()
    now, _ = _machine_clock()
    try:
        assert held.wait(60)
        with SQLiteLedger(path) as ledger:
            guard = sg.SpendGuard(hyper3d, ledger=ledger)
            alive_until = time.monotonic() + 1.5 * max_hold_ttl
            while time.monotonic() < alive_until:
                assert not guard.check(1).sufficient
                time.sleep(0.05)
            kill(worker.pid or 0)
            worker.join(10)
            with contextlib.closing(sqlite3.connect(path)) as db:
                (expires_at,) = db.execute("SELECT expires_at FROM spendguard_holds").fetchone()
            while not guard.check(1).sufficient:
                assert now() < expires_at + 2
                time.sleep(0.02)
            assert now() >= expires_at
            with guard.spend(1):
                pass
    finally:
        worker.kill()
        worker.join(10)
    assert _held(path) == 0


# -- files that cannot be used ---------------------------------------------------------------


def _guards(
    hyper3d: sg.Hyper3D, path: Path, **options: Any
) -> tuple[SQLiteLedger, SQLiteLedger, sg.SpendGuard, sg.SpendGuard]:
    strict = SQLiteLedger(path, **options)
    lenient = SQLiteLedger(path, on_ledger_error="local", **options)
    return (
        strict,
        lenient,
        sg.SpendGuard(hyper3d, ledger=strict),
        sg.SpendGuard(hyper3d, ledger=lenient),
    )


def _assert_unusable(
    hyper3d: sg.Hyper3D, path: Path, caplog: pytest.LogCaptureFixture, match: str
) -> None:
    """Under "raise" the call does not run (LedgerError naming the file); under "local"
    the guard decides in its own process, with a WARNING."""
    caplog.set_level(logging.WARNING, logger="spendguard")
    strict, lenient, raising, local = _guards(hyper3d, path, busy_timeout=0.2)
    ran: list[int] = []

    @raising(cost=1)
    def generate() -> None:
        ran.append(1)

    with pytest.raises(sg.LedgerError, match=match) as failed:
        generate()
    assert ran == []
    assert failed.value.ledger == f"sqlite:{path}"
    assert not isinstance(failed.value.__cause__, sg.LedgerError)
    copy = pickle.loads(pickle.dumps(failed.value))
    assert copy.message == failed.value.message
    with local.spend(6), pytest.raises(sg.InsufficientCredits):
        local.require(5)
    assert local.available() == 4
    assert "on_ledger_error='local'" in caplog.text
    strict.close()
    lenient.close()


def test_a_file_that_is_not_a_database(hyper3d: sg.Hyper3D, path: Path, caplog: Any) -> None:
    """A file of something else is a LedgerError, or the local fallback."""
    path.write_bytes(b"these are not the tables you are looking for\n" * 100)
    _assert_unusable(hyper3d, path, caplog, "not a database")


def test_a_directory_in_place_of_the_file(hyper3d: sg.Hyper3D, path: Path, caplog: Any) -> None:
    """A directory where the file should be is a LedgerError, or the local fallback."""
    path.mkdir()
    _assert_unusable(hyper3d, path, caplog, "directory")


def test_a_read_only_file(hyper3d: sg.Hyper3D, path: Path, caplog: Any) -> None:
    """A database the process may not write is a LedgerError, or the local fallback."""
    with SQLiteLedger(path) as ledger:
        sg.SpendGuard(_Wallet(Decimal(1)), ledger=ledger).check(1)
    for side in path.parent.glob(f"{path.name}-*"):
        side.unlink()
    immutable = os.geteuid() == 0  # root writes read-only files: make it immutable
    if immutable:
        if shutil.which("chattr") is None:
            pytest.skip("running as root without chattr")
        if subprocess.run(["chattr", "+i", str(path)], check=False).returncode:
            pytest.skip("running as root on a filesystem without chattr +i")
    else:
        path.chmod(0o444)
    try:
        _assert_unusable(hyper3d, path, caplog, "readonly|read-only")
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_locked_database(hyper3d: sg.Hyper3D, path: Path, caplog: Any) -> None:
    """A database another program keeps locked past busy_timeout is a LedgerError, or the
    local fallback; nothing waits longer than that."""
    with SQLiteLedger(path) as ledger:
        sg.SpendGuard(_Wallet(Decimal(1)), ledger=ledger).check(1)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        _assert_unusable(hyper3d, path, caplog, "busy_timeout")
        assert time.monotonic() - started < 5
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_the_file_deleted_mid_run(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Deleting the file while guards spend through it: every later decision of those
    ledgers is a LedgerError (their holds are gone with the file), or the local fallback;
    a hold open at the deletion still ends without an exception."""
    caplog.set_level(logging.WARNING, logger="spendguard")
    strict, lenient, raising, local = _guards(hyper3d, path)
    with raising.spend(1):
        pass
    with local.spend(1):
        pass
    stop = threading.Event()
    errors: list[BaseException] = []

    def spend() -> None:
        while not stop.is_set():
            try:
                with raising.spend("0.01"):
                    time.sleep(0.001)
            except sg.LedgerError:
                return
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                return

    spender = threading.Thread(target=spend)
    open_hold = local.spend(1).__enter__()
    spender.start()
    time.sleep(0.1)
    for file in path.parent.glob(f"{path.name}*"):
        file.unlink()
    spender.join(10)
    stop.set()
    assert errors == []
    with pytest.raises(sg.LedgerError, match="deleted or replaced"):
        raising.check(1)
    SQLiteLedger(path).close()  # a new process would start a new file: still refused
    with pytest.raises(sg.LedgerError, match="deleted or replaced"):
        raising.check(1)
    open_hold.release()
    assert open_hold.state == "released"
    assert local.check(1).sufficient
    assert "on_ledger_error='local'" in caplog.text
    strict.close()
    lenient.close()


class _Wallet:
    """An in-memory provider counting its lookups."""

    name, unit = "wallet", "credits"

    def __init__(self, balance: Decimal) -> None:
        self.balance = balance
        self.account_id = f"wallet:{id(self)}"
        self.lookups = 0

    def fetch_balance(self) -> Decimal:
        return self.balance

    def check(self, amount: Decimal) -> sg.Check:
        self.lookups += 1
        return sg.Check.of(amount, self.balance, self.unit, "remote")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:This process:DeprecationWarning")
def test_a_forked_child_opens_its_own_connection(path: Path) -> None:
    """A child forked while the parent holds decides through the same ledger object on its
    own connection, sees the parent's hold, and leaves the parent's connection working."""
    wallet = _Wallet(Decimal(10))
    with SQLiteLedger(path) as ledger:
        guard = sg.SpendGuard(wallet, ledger=ledger)
        with guard.spend(8):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 0 if not guard.check(3).sufficient and guard.check(2).sufficient else 1
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            assert not guard.check(3).sufficient
        assert guard.balance() == 2


def test_a_renewal_may_bring_the_expiry_forward(path: Path, clock: FakeClock) -> None:
    """renew() with a shorter hold_ttl than the hold had: it expires at the new time."""
    wallet = _Wallet(Decimal(10))
    with SQLiteLedger(path, clock=clock) as ledger:
        options: dict[str, Any] = {"floor": Decimal(0), "ttl": 600.0, "refresh_interval": 600.0}
        taken = ledger.admit(
            wallet.account_id, Decimal(8), hold_ttl=300.0, lookup=wallet.check, **options
        )
        assert taken.hold_id is not None
        assert ledger.renew(wallet.account_id, taken.hold_id, 10.0)
        clock.advance(11)
        answer = ledger.admit(
            wallet.account_id, Decimal(3), hold_ttl=None, lookup=wallet.check, **options
        )
        assert answer.admitted
        assert answer.held == 0
        assert not ledger.renew(wallet.account_id, taken.hold_id, 10.0)


def test_amounts_ignore_the_callers_decimal_context(path: Path, clock: FakeClock) -> None:
    """With the application's decimal precision at 3 digits, the ledger still stores and
    answers 12.345678 exactly, and a NaN charge still ends its hold."""
    wallet = _Wallet(Decimal("12.345678"))
    options: dict[str, Any] = {"floor": Decimal(0), "ttl": 600.0, "refresh_interval": 600.0}
    with SQLiteLedger(path, clock=clock) as ledger, decimal.localcontext() as context:
        context.prec = 3
        taken = ledger.admit(
            wallet.account_id, Decimal("0.000001"), hold_ttl=60.0, lookup=wallet.check, **options
        )
        assert taken.available == Decimal("12.345678")
        assert taken.held == Decimal("0.000001")
        ledger.end(wallet.account_id, taken.hold_id, Decimal("NaN"))
        after = ledger.admit(wallet.account_id, Decimal(0), hold_ttl=None, lookup=None, **options)
    assert after.held == 0
    assert after.available == Decimal("12.345678") - MAX_AMOUNT
