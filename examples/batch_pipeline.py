"""A 200-item Hyper3D Rodin job, guarded as one batch: forecast, progress, refusal.

Runs as is, against a local ProviderSimulator holding 120 credits:

    python examples/batch_pipeline.py

The whole job is priced and held before the first generation; each item's share moves
from "held" to "spent" as the loop reaches the next one. A second job that the account
cannot pay for is refused before it starts. With tqdm installed
(``pip install 'spendguard-preflight[progress]'``) the job shows a progress bar.
"""

from __future__ import annotations

import requests

import spendguard as sg
from spendguard.testing import ProviderSimulator

PRICES = {"Regular": "0.5", "Gen-2.5-Extreme-High": "1.0"}


def tier(job: int) -> str:
    """Every tenth model is rendered at the top tier."""
    return "Gen-2.5-Extreme-High" if job % 10 == 0 else "Regular"


def cost(job: int) -> str:
    """What one item costs, in credits."""
    return PRICES[tier(job)]


def main() -> None:
    """Forecast, run and account for a 200-item job; then show a job that does not fit."""
    with ProviderSimulator(hyper3d_credits="120") as sim:
        provider = sg.Hyper3D(sim.api_key, base_url=sim.url)
        guard = sg.SpendGuard(provider, ttl=60)
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {sim.api_key}"

        def generate(job: int) -> None:
            data = {"prompt": f"a wooden chair, variant {job}", "tier": tier(job)}
            with http.post(f"{sim.url}/api/v2/rodin", data=data, timeout=10) as response:
                response.raise_for_status()

        jobs = range(200)
        print("forecast:", guard.forecast(jobs, cost))

        try:
            batch = guard.batch(jobs, cost, progress=True, label="chairs")
            plain = False
        except ImportError:
            print("(tqdm is not installed: plain progress lines instead of a bar)")
            batch = guard.batch(jobs, cost, label="chairs")
            plain = True
        with batch:
            for job in batch:
                generate(job)
                if plain and (job + 1) % 50 == 0:
                    print(f"  {job + 1}/200 started, {batch.spent} spent, {batch.held} held")
        print(
            f"done: {batch.count} generations, {batch.spent} credits spent; "
            f"the simulator charged {len(sim.charges)} calls and holds "
            f"{sim.hyper3d_balance} credits"
        )

        upgrade = range(200)
        print("forecast:", guard.forecast(upgrade, "1.0"))
        try:
            guard.batch(upgrade, "1.0")
        except sg.InsufficientCredits as error:
            print("refused before the first item:", error)
            print(f"nothing was held ({guard.held} credits); {error.affordable} items would fit")
        http.close()
        provider.close()


if __name__ == "__main__":
    main()
