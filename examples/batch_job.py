"""A tiny batch job for ``ci_gate.sh``: one Hyper3D Rodin generation per prompt.

Each generation (tier Regular, 0.5 credits) runs inside ``guard.spend``, so the job stops
before a call the account can no longer pay for. Reads ``HYPER3D_API_KEY`` (or
``RODIN_API_KEY``) and ``SPENDGUARD_HYPER3D_URL`` like the library; against a real account
it spends real credits. With no key set it runs against the bundled simulator instead.

    python examples/batch_job.py "a brass teapot" "a mossy boulder"
"""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack

import requests

import spendguard as sg
from spendguard.testing import ProviderSimulator

PRICE = "0.5"
DEFAULT_PROMPTS = ("a brass teapot", "a mossy boulder", "a paper lantern", "a chess knight")


def generate(http: requests.Session, provider: sg.Hyper3D, key: str, prompt: str) -> str:
    """Submit one Regular generation; return its job id."""
    response = http.post(
        f"{provider.base_url}/api/v2/rodin",
        headers={"Authorization": f"Bearer {key}"},
        files={"prompt": (None, prompt), "tier": (None, "Regular")},
        timeout=30,
    )
    with response:
        response.raise_for_status()
        return str(response.json()["uuid"])


def main(prompts: list[str]) -> int:
    """Run the batch; exit 1 if the account runs short part-way."""
    key = os.environ.get("HYPER3D_API_KEY") or os.environ.get("RODIN_API_KEY")
    with ExitStack() as stack:
        if key:
            provider = sg.Hyper3D()
        else:
            sim = stack.enter_context(ProviderSimulator())
            print(f"batch_job: no HYPER3D_API_KEY set; using the bundled simulator at {sim.url}")
            key = sim.api_key
            provider = sg.Hyper3D(key, base_url=sim.url)
        stack.callback(provider.close)
        http = stack.enter_context(requests.Session())
        guard = sg.SpendGuard(provider)
        for done, prompt in enumerate(prompts, 1):
            try:
                with guard.spend(PRICE):
                    job = generate(http, provider, key, prompt)
            except sg.InsufficientCredits as exc:
                print(f"batch_job: stopped before item {done}: {exc}", file=sys.stderr)
                return 1
            print(f"[{done}/{len(prompts)}] {prompt!r}: job {job}, credits spent: {guard.spent}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or list(DEFAULT_PROMPTS)))
