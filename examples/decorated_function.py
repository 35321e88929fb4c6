"""Guard a function that starts a paid Hyper3D Rodin generation.

Runs as is: it starts the bundled simulator on 127.0.0.1 (2.5 credits) instead of the
real API. Against the real service, drop the simulator and set HYPER3D_API_KEY.
"""

from __future__ import annotations

import requests

import spendguard as sg
from spendguard.pricing import rodin_cost
from spendguard.testing import ProviderSimulator


def main() -> None:
    with ProviderSimulator(hyper3d_credits="2.5") as sim:
        provider = sg.Hyper3D(sim.api_key, base_url=sim.url)
        guard = sg.SpendGuard(provider, ttl=60)
        http = requests.Session()

        @guard(cost=lambda prompt, tier="Regular", addons=(): rodin_cost(tier, addons))
        def generate(prompt: str, tier: str = "Regular", addons: tuple[str, ...] = ()) -> str:
            """Submit one Rodin job and return its task id."""
            response = http.post(
                f"{provider.base_url}/api/v2/rodin",
                data={"prompt": prompt, "tier": tier, "addons": list(addons)},
                headers={"Authorization": f"Bearer {sim.api_key}"},
                timeout=30,
            )
            response.raise_for_status()
            return str(response.json()["uuid"])

        print(f"balance ({provider.unit}):", guard.balance())
        print("submitted", generate("a wooden chair"))
        print("submitted", generate("a lamp", tier="Gen-2.5-Extreme-High"))
        try:
            generate("a sofa", addons=("HighPack",))
        except sg.InsufficientCredits as exc:
            print("refused before the request was sent:", exc)
        print(f"balance now ({provider.unit}):", guard.balance())
        print("balance lookups made:", sim.count("GET /api/v2/check_balance"))
        http.close()
        provider.close()


if __name__ == "__main__":
    main()
