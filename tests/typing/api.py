# mypy: warn-return-any, warn-unused-ignores
"""Type-checked, never run: what a user's ``mypy --strict`` sees of the public API.

Every ``assert_type`` fails if a decorated function or a result degrades to ``Any``;
every ``type: ignore[...]`` marks a call that must stay an error, and mypy reports an
ignore that is no longer needed (a call on ``Any`` is never an error). ``.ci/run`` and
``tests/test_typing.py`` check it.
"""

from __future__ import annotations

from collections.abc import Coroutine
from decimal import Decimal
from typing import Any

import httpx
from typing_extensions import assert_type

import spendguard as sg
from spendguard.httpx import AsyncGuardedTransport, GuardedTransport
from spendguard.pricing import RODIN_PRICES, rodin_cost

guard = sg.SpendGuard(sg.Hyper3D("key"), ttl=60)


# -- the decorator keeps the signature: functions, methods, classmethods, coroutines --


@guard(cost="0.5")
def generate(prompt: str, tier: str = "Regular") -> int:
    return len(prompt + tier)


assert_type(generate("a chair"), int)
assert_type(generate("a chair", tier="Sketch"), int)
generate(1)  # type: ignore[arg-type]
generate("a chair", tiers="Sketch")  # type: ignore[call-arg]
generate()  # type: ignore[call-arg]


def price(prompt: str, tier: str = "Regular") -> Decimal:
    return Decimal("1.0") if tier == "Gen-2.5-Extreme-High" else Decimal("0.5")


@guard(cost=price)
def priced(prompt: str, tier: str = "Regular") -> str:
    return prompt


assert_type(priced("a chair", "Sketch"), str)


class Job:
    @guard(cost=1)
    def run(self, count: int) -> list[str]:
        return ["done"] * count

    @guard(cost=1)
    @classmethod
    def build(cls, name: str) -> Job:
        return cls()

    @guard(cost=1)
    @staticmethod
    def plain(count: int) -> bytes:
        return b"x" * count


job = Job()
assert_type(job.run(2), list[str])
assert_type(Job.build("x"), Job)
assert_type(Job.plain(3), bytes)
assert_type(job.plain(3), bytes)
job.run("2")  # type: ignore[arg-type]
Job.build(1)  # type: ignore[arg-type]
Job.plain()  # type: ignore[call-arg]


@guard(cost=2)
async def agenerate(prompt: str) -> tuple[str, int]:
    return prompt, 1


assert_type(agenerate("a chair"), Coroutine[Any, Any, tuple[str, int]]).close()
agenerate(b"a chair").close()  # type: ignore[arg-type]


# -- check / acheck, spend as `with` and `async with` -----------------------------------

assert_type(guard.check("0.5"), sg.Check)
assert_type(guard.check(1).shortfall, Decimal)
assert_type(guard.require(Decimal("0.5")), sg.Check)
assert_type(guard.balance(), Decimal)
assert_type(guard.available(), Decimal)
assert_type(guard.stats, sg.Stats)
assert_type(guard.holds(), list[sg.Hold])
guard.check(object())  # type: ignore[arg-type]

with guard.spend("1.5", label="job") as hold:
    assert_type(hold, sg.Hold)
    assert_type(hold.state, sg.HoldState)
    hold.settle("1.0")


def on_decision(decision: sg.Decision) -> None:
    assert_type(decision.shortfall, Decimal)


watched = sg.SpendGuard(sg.Orthogonal("key"), on_decision=[on_decision], on_unavailable="stale")
sg.SpendGuard(sg.Orthogonal("key"), on_unavailable="ignore")  # type: ignore[arg-type]
assert_type(watched.session(), sg.GuardedSession)
assert_type(sg.GuardedSession(watched, rodin_prices=RODIN_PRICES), sg.GuardedSession)
assert_type(rodin_cost("Gen-2.5-High", ["HighPack"], prices=RODIN_PRICES), Decimal)


# -- batches: Batch[T], AsyncBatch[T], forecasts, MapResult[T, R] ------------------------

prompts = ["a chair", "a table"]


def item_price(prompt: str) -> Decimal:
    return Decimal(len(prompt)) / 10


with guard.batch(prompts, item_price, partial=True) as batch:
    assert_type(batch, sg.Batch[str])
    for prompt in batch:
        assert_type(prompt, str)
    assert_type(batch.skipped, list[str])


def count_price(count: int) -> int:
    return count


guard.batch(prompts, count_price)  # type: ignore[arg-type]

assert_type(guard.forecast(prompts, "0.5"), sg.Forecast)
assert_type(guard.forecast(prompts, "0.5").sufficient, bool)

mapped = guard.map(len, prompts, cost=item_price, workers=2)
assert_type(mapped, sg.MapResult[str, int])
assert_type(mapped.results, tuple[int, ...])
assert_type(mapped.refused, tuple[sg.Refusal[str], ...])
assert_type(mapped.refused[0].item, str)


async def size(prompt: str) -> int:
    return len(prompt)


async def coroutines() -> None:
    assert_type(await agenerate("a chair"), tuple[str, int])
    assert_type(await guard.acheck("0.5"), sg.Check)
    async with guard.spend(1) as ahold:
        assert_type(ahold, sg.Hold)
    async with guard.abatch(prompts, item_price) as abatch:
        assert_type(abatch, sg.AsyncBatch[str])
        async for prompt in abatch:
            assert_type(prompt, str)
    assert_type(await guard.aforecast(prompts, 1), sg.Forecast)
    amapped = await guard.amap(size, prompts, cost="0.5")
    assert_type(amapped, sg.MapResult[str, int])
    await guard.amap(len, prompts, cost=1)  # type: ignore[arg-type]


# -- errors carry typed data -------------------------------------------------------------

try:
    generate("a chair")
except sg.InsufficientCredits as exc:
    assert_type(exc.shortfall, Decimal | None)
    assert_type(exc.required, Decimal)


# -- guarded httpx clients ---------------------------------------------------------------

assert_type(guard.httpx_client(timeout=5), httpx.Client)
assert_type(guard.async_httpx_client(), httpx.AsyncClient)
httpx.Client(transport=GuardedTransport(guard, prices={"POST /v1/x": "0.25"}))
httpx.AsyncClient(mounts={"https://": AsyncGuardedTransport(guard, max_cost="1")})
GuardedTransport(guard, httpx.AsyncHTTPTransport())  # type: ignore[arg-type]
