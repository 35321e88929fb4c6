"""An async Rodin job through an httpx client: submitted only when the account can pay.

Runs as is, against a local ProviderSimulator holding 1.5 Hyper3D credits:

    pip install 'spendguard-preflight[httpx]'
    python examples/async_generation.py
"""

from __future__ import annotations

import asyncio
import sys

import spendguard as sg
from spendguard.testing import ProviderSimulator

try:
    from spendguard.httpx import AsyncGuardedTransport  # says which extra to install
except ImportError as missing:
    sys.exit(f"async_generation.py: {missing}")

import httpx


async def generate(http: httpx.AsyncClient, prompt: str, tier: str) -> str:
    """Submit one generation and wait for its job; the submission is the billable call."""
    submitted = await http.post("/api/v2/rodin", data={"prompt": prompt, "tier": tier})
    submitted.raise_for_status()
    job = submitted.json()
    # Polling and downloading are free: they pass through unpriced.
    status = await http.post(
        "/api/v2/status", json={"subscription_key": job["jobs"]["subscription_key"]}
    )
    states = {item["status"] for item in status.json()["jobs"]}
    return f"job {job['uuid']}: {', '.join(sorted(states))}"


async def main() -> None:
    """Three concurrent jobs on an account that pays for two of them."""
    with ProviderSimulator(hyper3d_credits="1.5") as sim:
        guard = sg.SpendGuard(sg.Hyper3D(sim.api_key, base_url=sim.url), ttl=60)
        transport = AsyncGuardedTransport(guard)  # wraps httpx.AsyncHTTPTransport()
        headers = {"Authorization": f"Bearer {sim.api_key}"}
        async with httpx.AsyncClient(
            base_url=sim.url, transport=transport, headers=headers
        ) as http:
            jobs = [
                generate(http, "a wooden chair", "Regular"),  # 0.5 credits
                generate(http, "a stone table", "Gen-2.5-Extreme-High"),  # 1 credit
                generate(http, "a glass lamp", "Regular"),  # 0.5 credits: no longer fits
            ]
            for result in await asyncio.gather(*jobs, return_exceptions=True):
                if isinstance(result, sg.InsufficientCredits):
                    print(f"refused:  {result}")
                elif isinstance(result, BaseException):
                    raise result
                else:
                    print(f"admitted: {result}")
        print(f"the server saw {sim.count('POST /api/v2/rodin')} generation request(s)")
        print(f"guard:    spent {guard.spent}, held {guard.held} credits")


if __name__ == "__main__":
    asyncio.run(main())
