"""Guard raw `requests` calls: a Rodin generation is refused before it leaves the machine.

Runs as is, against a local ProviderSimulator holding 2 Hyper3D credits:

    python examples/guarded_session.py
"""

from __future__ import annotations

import spendguard as sg
from spendguard.testing import ProviderSimulator


def main() -> None:
    """Submit one generation the account can pay for, and one it cannot."""
    with ProviderSimulator(hyper3d_credits="2") as sim:
        rodin = f"{sim.url}/api/v2/rodin"
        guard = sg.SpendGuard(sg.Hyper3D(sim.api_key, base_url=sim.url), ttl=60)
        with guard.session() as http:
            http.headers["Authorization"] = f"Bearer {sim.api_key}"

            # Regular + HighPack = 1.5 credits: admitted, held while in flight, settled.
            data = {"prompt": "a wooden chair", "tier": "Regular", "addons": "HighPack"}
            with http.post(rodin, data=data) as response:
                print(f"admitted: HTTP {response.status_code}, job {response.json()['uuid']}")

            # Gen-2.5-Extreme-High = 1 credit, but only 0.5 is left: refused locally.
            try:
                http.post(rodin, data={"prompt": "a chair", "tier": "Gen-2.5-Extreme-High"})
            except sg.InsufficientCredits as exc:
                print(f"refused:  {exc}")
            print(f"the server saw {sim.count('POST /api/v2/rodin')} generation request(s)")

            # Free routes go straight through, unpriced.
            with http.get(f"{sim.url}/api/v2/check_balance") as response:
                print(f"balance:  {response.json()['balance']} credits on the server")
        print(f"guard:    spent {guard.spent}, balance {guard.balance()} credits")


if __name__ == "__main__":
    main()
