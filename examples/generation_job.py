"""Hold credit around a whole generation job: submit, poll, download.

The block holds the job's price while it runs, so concurrent jobs cannot spend it too;
leaving the block settles it. Runs as is against the bundled simulator.
"""

from __future__ import annotations

from decimal import Decimal

import requests

import spendguard as sg
from spendguard.testing import ProviderSimulator


def run_job(http: requests.Session, base_url: str, key: str, prompt: str) -> str:
    """Submit a HighPack job, wait for it and return the first file's URL."""
    auth = {"Authorization": f"Bearer {key}"}
    job = http.post(
        f"{base_url}/api/v2/rodin",
        data={"prompt": prompt, "tier": "Regular", "addons": "HighPack"},
        headers=auth,
        timeout=30,
    ).json()
    status = http.post(
        f"{base_url}/api/v2/status",
        json={"subscription_key": job["jobs"]["subscription_key"]},
        headers=auth,
        timeout=30,
    ).json()
    assert all(j["status"] == "Done" for j in status["jobs"])
    files = http.post(
        f"{base_url}/api/v2/download", json={"task_uuid": job["uuid"]}, headers=auth, timeout=30
    ).json()
    return str(files["list"][0]["url"])


def main() -> None:
    with ProviderSimulator(hyper3d_credits="2") as sim:
        provider = sg.Hyper3D(sim.api_key, base_url=sim.url)
        guard = sg.SpendGuard(provider, floor="0.25")
        with requests.Session() as http:
            with guard.spend("1.5") as hold:
                print("holding", hold)
                print("model at", run_job(http, provider.base_url, sim.api_key, "a chair"))
            print("after the job:", hold, "| available:", guard.available(), provider.unit)

            try:
                with guard.spend("1.5"):
                    run_job(http, provider.base_url, sim.api_key, "a table")
            except sg.InsufficientCredits as exc:
                print("second job refused:", exc)
                print("shortfall:", exc.shortfall, exc.unit)
        assert sim.hyper3d_balance == Decimal("0.5")
        provider.close()


if __name__ == "__main__":
    main()
