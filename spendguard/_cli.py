"""The ``spendguard`` command: check an account from a shell, or watch the guard work.

Commands::

    spendguard balance [--provider orthogonal|hyper3d] [--timeout S] [--retries N] [--json]
    spendguard check AMOUNT [--provider ...] [--floor X] [--timeout S] [--retries N] [--json]
    spendguard demo
    spendguard simulate [--host H] [--port N] [--orthogonal-usd X] [--hyper3d-credits X]
                        [--units-per-dollar N] [--key KEY] [--provider P]
                        [--fail ROUTE=STATUS] [--slow ROUTE=SECONDS]

Global options: ``--version``, ``-v/--verbose`` (DEBUG logs of logger ``spendguard`` on
stderr: one line per HTTP lookup, or per request the simulator serves), ``--help``.

The provider is ``--provider``, else ``SPENDGUARD_PROVIDER``, else the one whose key is
set: ``ORTHOGONAL_API_KEY``, or ``HYPER3D_API_KEY``/``RODIN_API_KEY``. Base URLs come from
``SPENDGUARD_ORTHOGONAL_URL`` and ``SPENDGUARD_HYPER3D_URL``, as in the library.

Exit codes: 0 the account covers the amount (or the command succeeded); 1 ``check`` found
it does not; 2 any error (bad arguments, no key, bad key, provider unreachable or answering
nonsense), reported as one ``spendguard: error: ...`` line on stderr; 130 interrupted;
141 stdout was closed early (``spendguard demo | head -3``), silently, like other tools.

JSON output (``--json``) is one object on one line of stdout, with keys in this order.
Amounts are strings holding exact decimals, never floats: US dollars keep at least two
decimals (``"5.00"``, ``"0.001"``, ``"-0.50"``), credits have no trailing zeros (``"10"``,
``"12.5"``). ``unit`` is ``"USD"`` or ``"credits"``. An error under ``--json`` is still one
line on stderr, and stdout gets one object too (``status`` only for an HTTP answer)::

    {"error": "hyper3d: the request timed out", "type": "BalanceUnavailable",
     "provider": "hyper3d", "status": null}

``balance``::

    {"provider": "orthogonal", "unit": "USD", "balance": "5.00"}

``check`` (``available`` is the balance minus ``floor``; ``shortfall`` is
``max(required - available, 0)``; ``source`` is ``"remote"`` for a fresh lookup)::

    {"provider": "hyper3d", "unit": "credits", "sufficient": false, "required": "12",
     "available": "10", "shortfall": "2", "source": "remote", "floor": "0"}
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

import requests

from ._answer import redact
from ._errors import (
    AuthenticationError,
    ConfigurationError,
    InsufficientCredits,
    ProviderError,
    SpendGuardError,
)
from ._guard import SpendGuard
from ._http import DEFAULT_RETRIES, build_session, is_loopback
from ._hyper3d import Hyper3D
from ._money import format_amount, to_amount
from ._orthogonal import Orthogonal
from ._version import __version__

if TYPE_CHECKING:
    from .testing import ProviderSimulator

__all__ = ["main"]

log = logging.getLogger("spendguard.cli")

PROVIDERS: dict[str, type[Orthogonal] | type[Hyper3D]] = {
    "orthogonal": Orthogonal,
    "hyper3d": Hyper3D,
}

EXIT_OK = 0
EXIT_INSUFFICIENT = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE, what a shell reports for tools cut off by `head`
PROVIDER_VAR = "SPENDGUARD_PROVIDER"

_BALANCE_JSON = '{"provider": "orthogonal", "unit": "USD", "balance": "5.00"}'
_CHECK_JSON = (
    '{"provider": "hyper3d", "unit": "credits", "sufficient": false, "required": "12",\n'
    '   "available": "10", "shortfall": "2", "source": "remote", "floor": "0"}'
)
_ENVIRONMENT = """\
environment:
  SPENDGUARD_PROVIDER                orthogonal or hyper3d, when both keys are set
  ORTHOGONAL_API_KEY                 key for Orthogonal (US dollars)
  HYPER3D_API_KEY or RODIN_API_KEY   key for Hyper3D Rodin (credits)
  SPENDGUARD_ORTHOGONAL_URL          base URL instead of https://api.orthogonal.com
  SPENDGUARD_HYPER3D_URL             base URL instead of https://api.hyper3d.com"""
_AMOUNTS = (
    "JSON amounts are exact decimal strings: dollars with at least two decimals,\n"
    "credits without trailing zeros."
)


class _UsageError(Exception):
    """The command line itself is wrong."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, reported by :func:`main`."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``spendguard`` command.

    Args:
        argv: The arguments after the program name; ``sys.argv[1:]`` by default.

    Returns:
        The exit code: 0 success, 1 ``check`` found the account short, 2 error,
        130 interrupted, 141 stdout closed early.
    """
    arguments = sys.argv[1:] if argv is None else list(argv)
    as_json = "--json" in arguments
    parser = _build_parser()
    logger = logging.getLogger("spendguard")
    level, handler = logger.level, None
    try:
        args = parser.parse_args(arguments)
        if args.verbose:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("spendguard: %(levelname)s: %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.DEBUG)
        if args.command is None:
            raise _UsageError("no command given; try 'spendguard demo' or 'spendguard --help'")
        run: Callable[[argparse.Namespace], int] = args.run
        return run(args)
    except SystemExit as exc:  # --help and --version end the parse this way
        return (
            exc.code if isinstance(exc.code, int) else EXIT_OK if exc.code is None else EXIT_ERROR
        )
    except KeyboardInterrupt:
        _report("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_CLOSED_PIPE
    except AuthenticationError as exc:
        names = " or ".join(_key_vars(exc.provider))
        _fail(exc, f"{exc} (check {names})" if names else str(exc), as_json)
        return EXIT_ERROR
    except (_UsageError, SpendGuardError, ValueError, TypeError, OSError) as exc:
        _fail(exc, str(exc), as_json)
        return EXIT_ERROR
    except Exception as exc:
        log.debug("unexpected error", exc_info=True)
        _fail(exc, f"unexpected {type(exc).__name__}: {exc}", as_json)
        return EXIT_ERROR
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            logger.setLevel(level)


# -- commands ----------------------------------------------------------------------------


def _balance(args: argparse.Namespace) -> int:
    name = _choose_provider(args.provider)
    with _lookup_session(args.retries) as session:
        provider = PROVIDERS[name](session=session, timeout=args.timeout, retries=args.retries)
        with _naming_host(provider.base_url):
            balance = provider.fetch_balance()
    unit = provider.unit
    if args.json:
        _print_json({"provider": name, "unit": unit, "balance": _json_amount(balance, unit)})
    else:
        print(f"{name}: {format_amount(balance, unit)}")
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    amount = to_amount(args.amount, name="AMOUNT")
    floor = to_amount(args.floor, name="--floor")
    name = _choose_provider(args.provider)
    with _lookup_session(args.retries) as session:
        provider = PROVIDERS[name](session=session, timeout=args.timeout, retries=args.retries)
        # ttl=0: a command answers about the account as it is now, never from a snapshot
        # another guard in the same process may have taken.
        with _naming_host(provider.base_url):
            result = SpendGuard(provider, ttl=0, floor=floor).check(amount)
    unit = result.unit
    if args.json:
        _print_json(
            {
                "provider": name,
                "unit": unit,
                "sufficient": result.sufficient,
                "required": _json_amount(result.required, unit),
                "available": _json_amount(result.available, unit),
                "shortfall": _json_amount(result.shortfall, unit),
                "source": result.source,
                "floor": _json_amount(floor, unit),
            }
        )
    else:
        verdict = "covered" if result.sufficient else "NOT covered"
        print(f"{name}: {verdict}")
        print(f"  required:  {format_amount(result.required, unit)}")
        print(f"  available: {format_amount(result.available, unit)}")
        print(f"  shortfall: {format_amount(result.shortfall, unit)}")
        if floor:
            # The floor is part of what is required: say so when it alone makes the refusal.
            covered_without = result.available + floor >= result.required
            why = (
                f"; without it the account covers {format_amount(amount, unit)}"
                if not result.sufficient and covered_without
                else ""
            )
            print(f"  floor:     {format_amount(floor, unit)} (kept untouched{why})")
    return EXIT_OK if result.sufficient else EXIT_INSUFFICIENT


def _wait(stop: threading.Event) -> None:
    """Until ``stop`` is set (a loop of its own: inside a ``with``, CPython 3.12 and 3.13
    leave its backward jump out of the exception table)."""
    while not stop.wait(0.5):
        pass


def _simulate(args: argparse.Namespace) -> int:
    from .testing import ProviderSimulator  # on use: balance and check start faster without it

    # The default host is loopback, so a non-loopback address can only come from an
    # explicit --host: that is the opt-in, and it is said out loud.
    host: str = args.host
    if not is_loopback(host):
        _warn(
            f"listening on {host}: other machines can reach this simulator, "
            "which accepts one fixed key and holds fake money"
        )
    simulator = ProviderSimulator(
        host=host,
        port=args.port,
        api_key=args.key,
        orthogonal_usd=_balance_amount(args.orthogonal_usd, "--orthogonal-usd"),
        hyper3d_credits=_balance_amount(args.hyper3d_credits, "--hyper3d-credits"),
        units_per_dollar=args.units_per_dollar,
    )
    for route, status, times in args.fail:
        simulator.fail(route, status=status, times=times)
    for route, delay, times in args.slow:
        simulator.slow(route, delay, times=times)
    stop = threading.Event()
    with _signals_set(stop):
        try:
            simulator.start()
        except OSError as exc:
            raise OSError(f"cannot listen on {host}:{args.port}: {exc}") from None
        try:
            url = _client_url(host, simulator.port)
            key = shlex.quote(args.key)
            where = "" if url == simulator.url else f" (listening on {host})"
            print(f"# spendguard simulator: {url}{where}")
            print(
                f"# Orthogonal: {format_amount(simulator.orthogonal_balance, 'USD')} "
                f"({simulator.units_per_dollar} units per dollar); "
                f"Hyper3D Rodin: {format_amount(simulator.hyper3d_balance, 'credits')}"
            )
            print("# Point any program at it with these variables (Ctrl-C to stop):")
            for name in (args.provider,) if args.provider else PROVIDERS:
                print(f"export {PROVIDERS[name]._key_vars[0]}={key}")
                print(f"export {PROVIDERS[name]._url_var}={url}")
            # With both keys exported, this picks the one `spendguard balance` asks.
            print(f"export {PROVIDER_VAR}={args.provider or 'hyper3d'}", flush=True)
            _wait(stop)
        finally:
            simulator.stop()
    print("# spendguard simulator stopped", file=sys.stderr)
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from .testing import ProviderSimulator

    started = time.monotonic()
    with (
        ProviderSimulator(orthogonal_usd="5.00", hyper3d_credits="10") as sim,
        _lookup_session() as lookups,
        requests.Session() as http,
    ):
        _Demo(sim, lookups, http).run()
    print(f"\nFinished in {time.monotonic() - started:.1f} s. On a real account:")
    print("  export HYPER3D_API_KEY=...   # or ORTHOGONAL_API_KEY=...")
    print("  spendguard balance && spendguard check 2.5")
    return EXIT_OK


# -- the demo ----------------------------------------------------------------------------

_PRICE = Decimal("0.5")
_HIGH_PRICE = Decimal("1.0")
_BALANCE_ROUTE = "GET /api/v2/check_balance"
_PAID_ROUTE = "POST /api/v2/rodin"


class _Demo:
    """A small guarded pipeline of Hyper3D Rodin generations against a running simulator."""

    def __init__(
        self, sim: ProviderSimulator, lookups: requests.Session, http: requests.Session
    ) -> None:
        self.sim = sim
        self.http = http
        self.hyper3d = Hyper3D(sim.api_key, base_url=sim.url, timeout=5.0, session=lookups)
        self.orthogonal = Orthogonal(sim.api_key, base_url=sim.url, timeout=5.0, session=lookups)
        self.guard = SpendGuard(self.hyper3d, ttl=60)
        self.refused: list[InsufficientCredits] = []

    def run(self) -> None:
        """Print every section in turn."""
        print("spendguard demo: a guarded pipeline against the bundled provider simulator")
        print(f"Simulator: {self.sim.url} (fake money, no API key needed)")
        self.balance()
        prompts = [f"chess piece #{n}" for n in range(1, 9)]
        self.forecast(prompts)
        self.batch(prompts)
        self.decorated(calls=4)
        self.refusal(items=10)
        self.lookups()
        self.summary()

    def balance(self) -> None:
        """The balance, looked up once; the guard keeps it for its TTL."""
        _section("1. Balance")
        print(f"Hyper3D Rodin: {_credits(self.guard.balance())}")
        print(f"Orthogonal:    {format_amount(self.orthogonal.fetch_balance(), 'USD')}")

    def forecast(self, prompts: list[str]) -> None:
        """How much of a job fits, before starting it; nothing is held."""
        _section("2. Forecast")
        print(f"guard.forecast(items, cost) for Regular generations at {_credits(_PRICE)} each:")
        for job in (prompts, [*prompts] * 4):
            forecast = self.guard.forecast(job, _PRICE)
            print(f"  a job of {len(job):>2}: {forecast}")
        print("Nothing is held by a forecast.")

    def batch(self, prompts: list[str]) -> None:
        """Hold the whole batch up front; each item is a real paid call."""
        _section("3. Batch")
        guard = self.guard
        with guard.batch(prompts, _PRICE, label="demo batch") as batch:
            print(
                f"guard.batch() held {_credits(batch.total)} for {batch.count} items before "
                "the first one;"
            )
            print("each item POSTs /api/v2/rodin and counts as spent when the loop moves on.")
            for number, prompt in enumerate(batch, 1):
                job = self.generate(prompt, "Regular")
                print(
                    f"  [{number}/{batch.count}] job {job[:8]}: done {batch.done}, "
                    f"spent {_credits(batch.spent)}, held {_credits(batch.held)}, "
                    f"available {_credits(guard.available())}"
                )
        print(
            f"Batch closed: {batch.done} done, {_credits(batch.spent)} spent, "
            f"{_credits(guard.available())} still available"
        )

    def decorated(self, calls: int) -> None:
        """A decorated function is admitted while the account can pay for it."""
        _section("4. Decorated calls")

        @self.guard(cost=_HIGH_PRICE)
        def generate_high(prompt: str) -> str:
            return self.generate(prompt, "Gen-2.5-Extreme-High")

        print(f'@guard(cost="{_HIGH_PRICE}") on generate_high(prompt), tier Gen-2.5-Extreme-High')
        for number in range(1, calls + 1):
            prompt = f"statue #{number}"
            job = generate_high(prompt)
            print(f"  generate_high({prompt!r}) admitted: job {job[:8]}")
        print(f"Still available: {_credits(self.guard.available())}")

    def refusal(self, items: int) -> None:
        """A call the account cannot pay for never starts."""
        _section("5. Refusal")

        @self.guard(cost=lambda prompts: _PRICE * len(prompts))
        def generate_all(prompts: list[str]) -> list[str]:
            return [self.generate(prompt, "Regular") for prompt in prompts]

        prompts = [f"castle tower #{n}" for n in range(1, items + 1)]
        print(
            f"generate_all() of {items} prompts at {_credits(_PRICE)} each "
            f"needs {_credits(_PRICE * items)}"
        )
        sent_before = self.sim.count(_PAID_ROUTE)
        try:
            generate_all(prompts)
        except InsufficientCredits as exc:
            self.refused.append(exc)
            sent = self.sim.count(_PAID_ROUTE) - sent_before
            print(f"Refused before it started: {exc}")
            shortfall = "unknown" if exc.shortfall is None else _credits(exc.shortfall)
            print(f"Shortfall: {shortfall}; paid requests sent for it: {sent}")
        else:
            print("Admitted (the account could pay after all)")

    def lookups(self) -> None:
        """How many HTTP lookups the TTL cache saved."""
        _section("6. Balance lookups")
        stats = self.guard.stats
        lookups = self.sim.count(_BALANCE_ROUTE)
        print(f"Guarded decisions:                      {stats.decisions}")
        print(f"HTTP balance lookups the simulator saw: {lookups} ({_BALANCE_ROUTE})")
        print(f"Lookups saved by the TTL cache:         {max(stats.decisions - lookups, 0)}")

    def summary(self) -> None:
        """What was admitted, spent and refused, and the balance both ways."""
        _section("7. Summary")
        stats = self.guard.stats
        short = sum((exc.shortfall or Decimal(0) for exc in self.refused), Decimal(0))
        print(
            f"Decisions: {stats.decisions} ({stats.admitted} admitted, {stats.refused} refused, "
            "forecasts included)"
        )
        print(
            f"Paid calls: {self.sim.count(_PAID_ROUTE)} made, {_credits(self.guard.spent)} spent; "
            f"{len(self.refused)} refused before it started, short by {_credits(short)}"
        )
        print(
            f"Balance on the simulator: {_credits(self.sim.hyper3d_balance)}; "
            f"as the guard sees it: {_credits(self.guard.balance())}"
        )

    def generate(self, prompt: str, tier: str) -> str:
        """One paid Rodin generation on the simulator; returns the job's id."""
        # A session without retries: a paid call is never retried, unlike a lookup.
        response = self.http.post(
            f"{self.sim.url}/api/v2/rodin",
            headers={"Authorization": f"Bearer {self.sim.api_key}"},
            files={"prompt": (None, prompt), "tier": (None, tier)},
            timeout=5.0,
        )
        with response:
            response.raise_for_status()
            body = response.json()
        return str(body["uuid"])


def _section(title: str) -> None:
    print(f"\n== {title} ==")


def _credits(value: Decimal) -> str:
    return format_amount(value, "credits")


# -- parsing -----------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="spendguard",
        description="Check what an Orthogonal or Hyper3D Rodin account can pay for,\n"
        "before an expensive call runs.",
        epilog=f"""\
examples:
  spendguard demo                         see the guard work, no API key needed
  spendguard balance                      the account's balance with its unit
  spendguard check 2.5 && ./batch_job     run a batch job only if the account covers it

exit codes: 0 ok, 1 check: not covered, 2 error, 130 interrupted

{_ENVIRONMENT}""",
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"spendguard {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log each HTTP lookup on stderr"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    # -v also works after the command; SUPPRESS keeps it from undoing a -v given before.
    verbose = _Parser(add_help=False)
    verbose.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log each HTTP lookup on stderr",
    )

    balance = commands.add_parser(
        "balance",
        parents=[verbose],
        help="show the account's balance",
        description="Show the account's balance with its unit (one lookup, nothing spent).",
        epilog=f"""\
examples:
  spendguard balance
  spendguard balance --provider hyper3d --json

--json prints one line:
  {_BALANCE_JSON}
{_AMOUNTS}

{_ENVIRONMENT}""",
        formatter_class=formatter,
    )
    _provider_option(balance)
    _lookup_options(balance)
    balance.add_argument("--json", action="store_true", help="print one JSON object")
    balance.set_defaults(run=_balance)

    check = commands.add_parser(
        "check",
        parents=[verbose],
        help="exit 0 if the account covers AMOUNT, 1 if not, 2 on error",
        description="Exit 0 when the account covers AMOUNT, 1 when it does not (printing\n"
        "required, available and shortfall), 2 on any error (one line on stderr).",
        epilog=f"""\
examples:
  spendguard check 2.5 --provider hyper3d
  spendguard check 4.90 --floor 1 --json
  spendguard check "$TOTAL" && python batch_job.py

--json prints one line:
  {_CHECK_JSON}
{_AMOUNTS}

{_ENVIRONMENT}""",
        formatter_class=formatter,
    )
    check.add_argument(
        "amount",
        metavar="AMOUNT",
        help="what the work will cost, in the provider's unit (US dollars or credits)",
    )
    _provider_option(check)
    check.add_argument(
        "--floor", default="0", metavar="X", help="an amount to leave untouched on the account"
    )
    _lookup_options(check)
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(run=_check)

    demo = commands.add_parser(
        "demo",
        parents=[verbose],
        help="run a guarded pipeline against the bundled simulator (no API key needed)",
        description="Start the bundled provider simulator on loopback and run a small\n"
        "guarded pipeline against it: balance, forecast, batch, decorated calls, a\n"
        "refusal and the HTTP lookups the TTL cache saved. Nothing real is spent.",
        epilog="""\
example:
  spendguard demo
  spendguard -v demo     also log each HTTP lookup""",
        formatter_class=formatter,
    )
    demo.set_defaults(run=_demo)

    simulate = commands.add_parser(
        "simulate",
        parents=[verbose],
        help="serve the provider simulator until interrupted",
        description="Serve a simulator of both providers' credit APIs until Ctrl-C or\n"
        "SIGTERM, and print the environment variables that point any program at it.",
        epilog="""\
examples:
  spendguard simulate --hyper3d-credits 3 > sim.env &
  sleep 1; . ./sim.env
  spendguard check 2.5
  kill %1

  spendguard -v simulate --provider orthogonal --fail "POST /v1/credits/check=503"
  spendguard simulate --slow "GET /api/v2/check_balance=3x2"

--fail ROUTE=STATUS answers every matching request with that status (STATUSxN: the
next N only); --slow ROUTE=SECONDS delays them. ROUTE is "METHOD /path", a bare
path for any method, or "*". Both may be repeated. A negative balance rehearses an
overdrawn account. It binds 127.0.0.1 unless --host names another address.""",
        formatter_class=formatter,
    )
    simulate.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    simulate.add_argument(
        "--port", type=_port, default=8787, help="port; 0 picks a free one (default: %(default)s)"
    )
    simulate.add_argument(
        "--orthogonal-usd",
        default="5.00",
        metavar="X",
        help="Orthogonal balance in US dollars (default: %(default)s)",
    )
    simulate.add_argument(
        "--hyper3d-credits",
        default="10",
        metavar="X",
        help="Hyper3D Rodin balance in credits (default: %(default)s)",
    )
    simulate.add_argument(
        "--units-per-dollar",
        type=int,
        choices=(100_000, 100),
        default=100_000,
        metavar="N",
        help="scale of Orthogonal's *Cents fields: 100000 or 100 (default: %(default)s)",
    )
    simulate.add_argument(
        "--key",
        type=_key,
        default="sim-test-key",
        help="the Bearer key it accepts (default: %(default)s)",
    )
    simulate.add_argument(
        "--provider",
        choices=list(PROVIDERS),
        help="export only this provider's key and URL (default: both)",
    )
    simulate.add_argument(
        "--fail",
        type=_fault(_status),
        action="append",
        default=[],
        metavar="ROUTE=STATUS",
        help="answer matching requests with STATUS (STATUSxN: the next N only)",
    )
    simulate.add_argument(
        "--slow",
        type=_fault(_seconds),
        action="append",
        default=[],
        metavar="ROUTE=SECONDS",
        help="answer matching requests after SECONDS (SECONDSxN: the next N only)",
    )
    simulate.set_defaults(run=_simulate)
    return parser


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {port}")
    return port


def _key(text: str) -> str:
    if not text or any(c.isspace() or ord(c) < 32 for c in text):
        raise argparse.ArgumentTypeError("the key must be non-empty, without whitespace")
    return text


def _balance_amount(text: str, name: str) -> Decimal:
    """An amount as ``check`` validates it, where a leading minus means overdrawn."""
    text = text.strip()
    negative = text.startswith("-")
    amount = to_amount(text[1:] if negative else text, name=name)
    return -amount if negative else amount


_FOREVER = sys.maxsize  # a fault given without xN lasts as long as the simulator


def _fault(parse: Callable[[str], Any]) -> Callable[[str], tuple[str, Any, int]]:
    """An argparse type for ``ROUTE=VALUE`` or ``ROUTE=VALUExN``."""

    def parse_fault(text: str) -> tuple[str, Any, int]:
        route, equals, value = text.rpartition("=")
        if not equals or not route.strip():
            raise argparse.ArgumentTypeError(f"expected ROUTE=VALUE, got {text!r}")
        value, x, count = value.strip().partition("x")
        times = _FOREVER
        if x:
            if not count.isdigit() or int(count) < 1:
                raise argparse.ArgumentTypeError(f"xN needs a positive count, got {text!r}")
            times = int(count)
        return route.strip(), parse(value), times

    return parse_fault


def _status(text: str) -> int:
    if not text.isdigit() or not 100 <= int(text) <= 599:
        raise argparse.ArgumentTypeError(f"an HTTP status is 100 to 599, got {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"seconds must be positive and finite, got {text!r}")
    return seconds


def _retries(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 10:
        raise argparse.ArgumentTypeError(f"retries is a whole number from 0 to 10, got {text!r}")
    return int(text)


def _lookup_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="seconds to wait for each answer (default: %(default)s); a lookup gives up "
        "after about S x (N + 1) plus backoff",
    )
    parser.add_argument(
        "--retries",
        type=_retries,
        default=DEFAULT_RETRIES,
        metavar="N",
        help="retries after a timeout, connection error, 429 or 5xx (default: %(default)s)",
    )


def _provider_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--provider",
        choices=list(PROVIDERS),
        help="default: the one whose API key is set in the environment",
    )


# -- helpers -----------------------------------------------------------------------------


def _key_vars(provider: str) -> tuple[str, ...]:
    cls = PROVIDERS.get(provider)
    return cls._key_vars if cls is not None else ()


def _is_set(name: str) -> bool:
    return bool(os.environ.get(name, "").strip())


def _choose_provider(requested: str | None) -> str:
    """``--provider``, else ``SPENDGUARD_PROVIDER``, else the one provider with a key set."""
    if requested is None and _is_set(PROVIDER_VAR):
        requested = os.environ[PROVIDER_VAR].strip().lower()
        if requested not in PROVIDERS:
            raise ConfigurationError(
                f"{PROVIDER_VAR} must be {' or '.join(PROVIDERS)}, got {requested!r}"
            )
    if requested is not None:
        names = _key_vars(requested)
        if not any(map(_is_set, names)):
            raise ConfigurationError(f"{requested}: no API key; set {' or '.join(names)}")
        return requested
    found = [name for name in PROVIDERS if any(map(_is_set, _key_vars(name)))]
    if len(found) == 1:
        return found[0]
    if found:
        raise ConfigurationError(
            "keys for both providers are set (ORTHOGONAL_API_KEY and HYPER3D_API_KEY or "
            f"RODIN_API_KEY); choose one with --provider orthogonal or --provider hyper3d, "
            f"or set {PROVIDER_VAR}"
        )
    raise ConfigurationError(
        "no API key found; set ORTHOGONAL_API_KEY for Orthogonal, or HYPER3D_API_KEY (or "
        "RODIN_API_KEY) for Hyper3D Rodin; 'spendguard demo' needs no key"
    )


@contextmanager
def _lookup_session(retries: int = DEFAULT_RETRIES) -> Iterator[requests.Session]:
    """The library's retrying lookup session (it logs each lookup at DEBUG), closed after."""
    with build_session(retries) as session:
        yield session


@contextmanager
def _naming_host(base_url: str) -> Iterator[None]:
    """A provider that cannot be reached or understood is named by host in the message."""
    try:
        yield
    except AuthenticationError:
        raise
    except ProviderError as exc:
        parts = urlsplit(base_url)
        host = parts.hostname or base_url
        host = f"[{host}]" if ":" in host else host
        where = f"{host}:{parts.port}" if parts.port else host
        raise type(exc)(
            f"{exc.message} at {where}",
            provider=exc.provider,
            status=exc.status,
            code=exc.code,
        ) from exc


@contextmanager
def _signals_set(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` instead of interrupting, while inside."""

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handle)
    except ValueError:  # not the main thread: Ctrl-C still ends it as KeyboardInterrupt
        pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)


def _client_url(host: str, port: int) -> str:
    """A URL clients on this machine can use; a wildcard address means loopback."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _json_amount(value: Decimal, unit: str) -> str:
    """An exact decimal string: ``"5.00"``, ``"0.001"``, ``"-0.50"``, ``"12.5"``."""
    return format_amount(value, unit, bare=True).replace("$", "", 1)


def _print_json(payload: dict[str, object]) -> None:
    print(json.dumps(payload))


def _fail(exc: BaseException, message: str, as_json: bool) -> None:
    """Report an error on stderr and, under ``--json``, as one object on stdout too."""
    text = _report(message)
    if as_json:
        kind = "UsageError" if isinstance(exc, _UsageError) else type(exc).__name__
        _print_json(
            {
                "error": text,
                "type": kind,
                "provider": getattr(exc, "provider", None),
                "status": getattr(exc, "status", None),
            }
        )


def _silence_stdout() -> None:
    """The reader left (``| head``): point stdout at /dev/null so exiting stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (tests capture it)
        pass


def _report(message: str) -> str:
    """One line on stderr, with any API key from the environment redacted; returns it."""
    text = " ".join(message.split())
    for name in (var for cls in PROVIDERS.values() for var in cls._key_vars):
        key = os.environ.get(name, "").strip()
        if len(key) >= 6:
            text = text.replace(key, redact(key))
    print(f"spendguard: error: {text}", file=sys.stderr)
    return text


def _warn(message: str) -> None:
    print(f"spendguard: warning: {message}", file=sys.stderr)
