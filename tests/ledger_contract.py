"""What every shared ledger promises, as a hypothesis state machine over the ``sg.Ledger``
protocol: one protocol, one behaviour, whatever keeps the state.

A ledger's own test module runs it with::

    run_state_machine_as_test(lambda: LedgerContract(ledger), settings=CONTRACT_SETTINGS)

The machine drives one fresh account through admissions (with and without a hold, with
and without a lookup allowed), unconditional holds, endings (charged below, at and above
the amount held, twice, or with no hold), renewals, invalidations, provider top-ups and
charges the ledger cannot see, and failing lookups. It keeps a model of what the ledger
must hold, and after every step checks the ledger's answer against it: the snapshot, the
spending since it, the open holds, and exactly one lookup each time the snapshot is not
to be trusted. No step depends on time (holds are given a minute), so the machine runs the
same against any clock; expiry is tested apart.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
)

import spendguard as sg

CONTRACT_SETTINGS = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

_ZERO = Decimal(0)
_HOLD_TTL = 60.0
_TTL = 3600.0

# Multiples of 10^-5 (the providers' finest resolution), small and large.
amounts = st.one_of(
    st.sampled_from([Decimal(0), Decimal("0.5"), Decimal(1), Decimal(2), Decimal("2.5")]),
    st.integers(0, 12 * 10**5).map(lambda n: Decimal(f"{n}e-5")),
)
floors = st.sampled_from([_ZERO, _ZERO, Decimal(1), Decimal("0.25")])
balances = st.sampled_from([Decimal(0), Decimal(3), Decimal(10), Decimal("12.5"), Decimal(-1)])


class Wallet:
    """A provider whose balance the machine moves, and whose lookup can fail."""

    name, unit = "wallet", "credits"

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        self.balance = Decimal(10)
        self.failing = False
        self.lookups = 0

    def fetch_balance(self) -> Decimal:
        return self.balance

    def check(self, amount: Decimal) -> sg.Check:
        self.lookups += 1
        if self.failing:
            raise sg.BalanceUnavailable("the wallet is down", provider=self.name, status=503)
        return sg.Check.of(amount, self.balance, self.unit, "remote")


class LedgerContract(RuleBasedStateMachine):
    """The model of one account in a shared ledger, checked after every step."""

    held_ids = Bundle("held_ids")
    ended_ids = Bundle("ended_ids")

    def __init__(self, ledger: sg.Ledger) -> None:
        super().__init__()
        self.ledger = ledger
        self.account = f"contract:{uuid.uuid4().hex}"
        self.wallet = Wallet(self.account)
        self.snapshot: Decimal | None = None
        self.fresh = False
        self.spent = _ZERO
        self.holds: dict[str, Decimal] = {}
        self.failure_shared = False

    @property
    def held(self) -> Decimal:
        return sum(self.holds.values(), _ZERO)

    def available(self, floor: Decimal) -> Decimal | None:
        if self.snapshot is None:
            return None
        return self.snapshot - self.spent - self.held - floor

    # -- admissions ----------------------------------------------------------------------

    @rule(target=held_ids, amount=amounts, floor=floors, hold=st.booleans())
    def admit(self, amount: Decimal, floor: Decimal, hold: bool) -> object:
        """An admission that may look the balance up."""
        before = self.wallet.lookups
        try:
            answer = self.ledger.admit(
                self.account,
                amount,
                floor=floor,
                hold_ttl=_HOLD_TTL if hold else None,
                ttl=_TTL,
                refresh_interval=_TTL,
                lookup=self.wallet.check,
            )
        except sg.BalanceUnavailable:
            assert not self.fresh, "a fresh snapshot needs no lookup"
            if self.wallet.failing:
                assert self.wallet.lookups - before <= 1
            else:
                assert self.failure_shared, "only a lookup that failed shares its error"
                assert self.wallet.lookups == before
            self.failure_shared = True
            return multiple()
        if self.fresh:
            assert self.wallet.lookups == before, "a fresh snapshot needs no lookup"
            assert answer.source == "cache"
            assert answer.check is None
        else:
            assert self.wallet.lookups == before + 1, "a stale snapshot is looked up once"
            assert answer.source == "remote"
            assert answer.check is not None
            self.snapshot, self.spent, self.fresh = self.wallet.balance, _ZERO, True
            self.failure_shared = False
        available = self.available(floor)
        assert answer.available == available
        assert answer.admitted == (available is not None and available >= amount)
        assert answer.age is not None
        assert answer.age >= 0
        if answer.admitted and hold:
            assert answer.hold_id is not None
            self.holds[answer.hold_id] = amount
        else:
            assert answer.hold_id is None
        assert answer.held == self.held
        return answer.hold_id if answer.hold_id is not None else multiple()

    @rule(target=held_ids, amount=amounts, floor=floors, stale=st.booleans(), hold=st.booleans())
    def admit_without_lookup(
        self, amount: Decimal, floor: Decimal, stale: bool, hold: bool
    ) -> object:
        """An admission that may not look up (a failure policy's second try): from a fresh
        snapshot, from a stale one under ``max_stale``, or not at all."""
        before = self.wallet.lookups
        answer = self.ledger.admit(
            self.account,
            amount,
            floor=floor,
            hold_ttl=_HOLD_TTL if hold else None,
            ttl=_TTL,
            refresh_interval=_TTL,
            lookup=None,
            max_stale=1e9 if stale else None,
        )
        assert self.wallet.lookups == before
        usable = self.snapshot is not None and (self.fresh or stale)
        if not usable:
            assert not answer.admitted
            assert answer.available is None
            assert answer.hold_id is None
            assert answer.held == self.held
            return multiple()
        available = self.available(floor)
        assert answer.available == available
        assert answer.admitted == (available is not None and available >= amount)
        if answer.admitted and hold:
            assert answer.hold_id is not None
            self.holds[answer.hold_id] = amount
        else:
            assert answer.hold_id is None
        assert answer.held == self.held
        return answer.hold_id if answer.hold_id is not None else multiple()

    @rule(target=held_ids, amount=amounts)
    def hold(self, amount: Decimal) -> str:
        """A call let through by a failure policy or shadow mode holds whatever the balance."""
        answer = self.ledger.hold(self.account, amount, hold_ttl=_HOLD_TTL)
        assert answer.admitted
        assert answer.available == self.available(_ZERO)
        assert answer.hold_id is not None
        assert answer.hold_id not in self.holds
        self.holds[answer.hold_id] = amount
        assert answer.held == self.held
        return answer.hold_id

    # -- endings ---------------------------------------------------------------------------

    @rule(
        target=ended_ids,
        hold_id=consumes(held_ids),
        share=st.sampled_from([None, _ZERO, Decimal("0.5"), Decimal(1), Decimal(2)]),
    )
    def end(self, hold_id: str, share: Decimal | None) -> str:
        """A hold ends: released (``None``), or charged below, at or above its amount."""
        amount = self.holds.pop(hold_id)
        charged = None if share is None else amount * share
        self.ledger.end(self.account, hold_id, charged)
        self.spent += charged or _ZERO
        return hold_id

    @rule(hold_id=ended_ids, charged=st.sampled_from([None, Decimal("0.5")]))
    def end_again(self, hold_id: str, charged: Decimal | None) -> None:
        """Ending a hold that is gone changes no hold but still records the charge."""
        self.ledger.end(self.account, hold_id, charged)
        self.spent += charged or _ZERO

    @rule(charged=st.sampled_from([None, Decimal("0.25"), Decimal(3)]))
    def end_without_hold(self, charged: Decimal | None) -> None:
        """``hold_id=None`` records the charge alone."""
        self.ledger.end(self.account, None, charged)
        self.spent += charged or _ZERO

    @rule(hold_id=held_ids)
    def renew_open(self, hold_id: str) -> None:
        """Renewing an open hold finds it (when the ledger offers ``renew``)."""
        renew: Callable[[str, str, float], bool] | None = getattr(self.ledger, "renew", None)
        if renew is not None:
            assert renew(self.account, hold_id, _HOLD_TTL)

    @rule(hold_id=ended_ids)
    def renew_ended(self, hold_id: str) -> None:
        """Renewing an ended hold does not bring it back."""
        renew: Callable[[str, str, float], bool] | None = getattr(self.ledger, "renew", None)
        if renew is not None:
            assert not renew(self.account, hold_id, _HOLD_TTL)

    # -- the world outside -----------------------------------------------------------------

    @rule()
    def invalidate(self) -> None:
        """Every process must look the balance up before its next decision."""
        self.ledger.invalidate(self.account)
        self.fresh = False

    @rule(balance=balances)
    def provider_balance_moves(self, balance: Decimal) -> None:
        """A top-up or an outside charge: the ledger sees it with its next lookup only."""
        self.wallet.balance = balance

    @precondition(lambda self: not self.wallet.failing)
    @rule()
    def provider_goes_down(self) -> None:
        """Lookups fail from now on."""
        self.wallet.failing = True

    @precondition(lambda self: self.wallet.failing)
    @rule()
    def provider_comes_back(self) -> None:
        """Lookups answer again."""
        self.wallet.failing = False

    # -- after every step ------------------------------------------------------------------

    @invariant()
    def ledger_agrees_with_the_model(self) -> None:
        """The ledger's snapshot, spending since and open holds are the model's."""
        before = self.wallet.lookups
        answer = self.ledger.admit(
            self.account,
            _ZERO,
            floor=_ZERO,
            hold_ttl=None,
            ttl=_TTL,
            refresh_interval=_TTL,
            lookup=None,
            max_stale=1e9,
        )
        assert self.wallet.lookups == before
        assert answer.held == self.held
        assert answer.available == self.available(_ZERO)
        assert answer.hold_id is None

    def teardown(self) -> None:
        for hold_id in list(self.holds):
            self.ledger.end(self.account, hold_id, None)
