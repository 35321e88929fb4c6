"""Watch a guard: a decision hook feeding a log line and counters, then guard.stats.

Runs as is: it starts the bundled simulator on 127.0.0.1 (3 credits) instead of the real
API, lets some calls through, refuses one, then takes the provider down and decides from
the last known balance (``on_unavailable="stale"``). With ``opentelemetry-api``
installed, ``on_decision=[record, spendguard.otel.OTelMetrics()]`` sends the same
decisions to your metrics backend.
"""

from __future__ import annotations

import logging
from collections import Counter

import spendguard as sg
from spendguard.testing import ProviderSimulator

log = logging.getLogger("example")
outcomes: Counter[str] = Counter()


def record(decision: sg.Decision) -> None:
    """The decision hook: one log line and one counter per decision."""
    verdict = "admitted" if decision.allowed else "refused"
    outcomes[f"{verdict} from {decision.source}"] += 1
    age = "no balance" if decision.age is None else f"balance {decision.age:.1f} s old"
    log.info(
        "%s %s %s %s (%s available, %s)%s",
        decision.guard,
        verdict,
        decision.required,
        decision.unit,
        decision.available,
        age,
        f", short by {decision.shortfall}" if decision.shortfall else "",
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)-7s %(name)s: %(message)s")
    with (
        ProviderSimulator(hyper3d_credits="3") as sim,
        sg.Hyper3D(sim.api_key, base_url=sim.url, timeout=2, retries=1) as provider,
    ):
        guard = sg.SpendGuard(
            provider,
            ttl=60,
            on_unavailable="stale",
            max_stale=600,
            on_decision=record,
            name="renders",
        )

        @guard(cost="0.5")
        def generate(prompt: str) -> str:
            return f"model of {prompt}"

        @guard(cost=2)
        def generate_hd(prompt: str) -> str:
            return f"detailed model of {prompt}"

        for prompt in ("a chair", "a lamp", "a table", "a sofa"):
            generate(prompt)  # the first looks the balance up, the rest use the snapshot
        try:
            generate_hd("a castle")  # 1 credit left: refused before it starts
        except sg.InsufficientCredits as exc:
            print("refused:", exc)

        # The provider goes down and the snapshot is dropped: the next decisions cannot
        # look the balance up, so "stale" decides from the last one, minus what was spent.
        sim.fail("GET /api/v2/check_balance", status=503, times=10)
        guard.invalidate()
        print("outage:", generate("a boat"))
        try:
            generate_hd("a tower")
        except sg.InsufficientCredits as exc:
            print("refused during the outage:", exc)

        print()
        print("hook counters:", dict(sorted(outcomes.items())))
        print("guard.stats:  ", guard.stats)
        print("balance requests (retries included):", sim.count("GET /api/v2/check_balance"))


if __name__ == "__main__":
    main()
