"""A small batch loop that stops cleanly, before the request, when credit runs out.

Every item is guarded, so the loop never starts a call the account cannot pay for and
never leaves a half-submitted item behind. Runs as is against the bundled simulator.
"""

from __future__ import annotations

import requests

import spendguard as sg
from spendguard.testing import ProviderSimulator

PROMPTS = [f"a low-poly tree, variant {i}" for i in range(12)]


def main() -> None:
    with ProviderSimulator(hyper3d_credits="4") as sim, requests.Session() as http:
        provider = sg.Hyper3D(sim.api_key, base_url=sim.url)
        guard = sg.SpendGuard(provider, ttl=60)
        print(f"{len(PROMPTS)} prompts at 0.5 credits; {guard.check(6)}")
        done: list[str] = []
        for prompt in PROMPTS:
            try:
                with guard.spend("0.5"):
                    response = http.post(
                        f"{provider.base_url}/api/v2/rodin",
                        data={"prompt": prompt},
                        headers={"Authorization": f"Bearer {sim.api_key}"},
                        timeout=30,
                    )
                    response.raise_for_status()
                    done.append(response.json()["uuid"])
            except sg.InsufficientCredits as exc:
                print(f"stopped before item {len(done) + 1}: {exc}")
                break
        print(
            f"submitted {len(done)} of {len(PROMPTS)}; balance lookups: "
            f"{sim.count('GET /api/v2/check_balance')}; stats: {guard.stats}"
        )
        provider.close()


if __name__ == "__main__":
    main()
