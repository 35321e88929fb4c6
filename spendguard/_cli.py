"""The ``spendguard`` command: check an account from a shell, or watch the guard work.

Commands::

    spendguard balance [--provider orthogonal|hyper3d] [--json]
    spendguard check AMOUNT [--provider orthogonal|hyper3d] [--floor X] [--json]
    spendguard demo
    spendguard simulate [--host H] [--port N] [--orthogonal-usd X] [--hyper3d-credits X]
                        [--units-per-dollar N] [--key KEY]

Global options: ``--version``, ``-v/--verbose`` (DEBUG logs of logger ``spendguard`` on
stderr, one line per HTTP lookup), ``--help``.

The provider is ``--provider``, else the one whose key is set: ``ORTHOGONAL_API_KEY``, or
``HYPER3D_API_KEY``/``RODIN_API_KEY``. Base URLs come from ``SPENDGUARD_ORTHOGONAL_URL`` and
``SPENDGUARD_HYPER3D_URL``, as in the library.

Exit codes: 0 the account covers the amount (or the command succeeded); 1 ``check`` found
it does not; 2 any error (bad arguments, no key, bad key, provider unreachable or answering
nonsense), reported as one ``spendguard: error: ...`` line on stderr; 130 interrupted.

JSON output (``--json``) is one object on one line of stdout, with keys in this order.
Amounts are strings holding exact decimals, never floats: US dollars keep at least two
decimals (``"5.00"``, ``"0.001"``, ``"-0.50"``), credits have no trailing zeros (``"10"``,
``"12.5"``). ``unit`` is ``"USD"`` or ``"credits"``. Errors are never JSON: they go to
stderr as above.

``balance``::

    {"provider": "orthogonal", "unit": "USD", "balance": "5.00"}

``check`` (``available`` is the balance minus ``--floor``; ``shortfall`` is
``max(required - available, 0)``; ``source`` is ``"remote"`` for a fresh lookup)::

    {"provider": "hyper3d", "unit": "credits", "sufficient": false, "required": "12",
     "available": "10", "shortfall": "2", "source": "remote"}
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import requests

from ._answer import redact
from ._errors import AuthenticationError, ConfigurationError, InsufficientCredits, SpendGuardError
from ._guard import SpendGuard
from ._http import build_session, is_loopback
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

_BALANCE_JSON = '{"provider": "orthogonal", "unit": "USD", "balance": "5.00"}'
_CHECK_JSON = (
    '{"provider": "hyper3d", "unit": "credits", "sufficient": false, "required": "12",\n'
    '   "available": "10", "shortfall": "2", "source": "remote"}'
)
_ENVIRONMENT = """\
environment:
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
        130 interrupted.
    """
    parser = _build_parser()
    logger = logging.getLogger("spendguard")
    level, handler = logger.level, None
    try:
        args = parser.parse_args(argv)
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
    except AuthenticationError as exc:
        names = " or ".join(_key_vars(exc.provider))
        _report(f"{exc} (check {names})" if names else str(exc))
        return EXIT_ERROR
    except (_UsageError, SpendGuardError, ValueError, TypeError, OSError) as exc:
        _report(str(exc))
        return EXIT_ERROR
    except Exception as exc:
        log.debug("unexpected error", exc_info=True)
        _report(f"unexpected {type(exc).__name__}: {exc}")
        return EXIT_ERROR
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            logger.setLevel(level)


# -- commands ----------------------------------------------------------------------------


def _balance(args: argparse.Namespace) -> int:
    name = _choose_provider(args.provider)
    with _lookup_session() as session:
        provider = PROVIDERS[name](session=session)
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
    with _lookup_session() as session:
        provider = PROVIDERS[name](session=session)
        # ttl=0: a command answers about the account as it is now, never from a snapshot
        # another guard in the same process may have taken.
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
            }
        )
    else:
        verdict = "covered" if result.sufficient else "NOT covered"
        print(f"{name}: {verdict}")
        print(f"  required:  {format_amount(result.required, unit)}")
        print(f"  available: {format_amount(result.available, unit)}")
        print(f"  shortfall: {format_amount(result.shortfall, unit)}")
        if floor:
            print(f"  floor:     {format_amount(floor, unit)} (kept untouched)")
    return EXIT_OK if result.sufficient else EXIT_INSUFFICIENT


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
        orthogonal_usd=args.orthogonal_usd,
        hyper3d_credits=args.hyper3d_credits,
        units_per_dollar=args.units_per_dollar,
    )
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
            print(f"export ORTHOGONAL_API_KEY={key}")
            print(f"export HYPER3D_API_KEY={key}")
            print(f"export SPENDGUARD_ORTHOGONAL_URL={url}")
            print(f"export SPENDGUARD_HYPER3D_URL={url}", flush=True)
            while not stop.wait(0.5):
                pass
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
example:
  spendguard simulate --hyper3d-credits 3 > sim.env &
  sleep 1; . ./sim.env
  spendguard check 2.5 --provider hyper3d
  kill %1

It binds 127.0.0.1 unless --host names another address.""",
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
        type=_number,
        default="5.00",
        metavar="X",
        help="Orthogonal balance in US dollars (default: %(default)s)",
    )
    simulate.add_argument(
        "--hyper3d-credits",
        type=_number,
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


def _number(text: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


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
    """``--provider``, else the one provider whose key is in the environment."""
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
            "RODIN_API_KEY); choose one with --provider orthogonal or --provider hyper3d"
        )
    raise ConfigurationError(
        "no API key found; set ORTHOGONAL_API_KEY for Orthogonal, or HYPER3D_API_KEY (or "
        "RODIN_API_KEY) for Hyper3D Rodin; 'spendguard demo' needs no key"
    )


@contextmanager
def _lookup_session() -> Iterator[requests.Session]:
    """The library's retrying lookup session (it logs each lookup at DEBUG), closed after."""
    with build_session() as session:
        yield session


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


def _report(message: str) -> None:
    """One line on stderr, with any API key from the environment redacted."""
    text = " ".join(message.split())
    for name in (var for cls in PROVIDERS.values() for var in cls._key_vars):
        key = os.environ.get(name, "").strip()
        if len(key) >= 6:
            text = text.replace(key, redact(key))
    print(f"spendguard: error: {text}", file=sys.stderr)


def _warn(message: str) -> None:
    print(f"spendguard: warning: {message}", file=sys.stderr)
