"""The ``spendguard`` command, run as a real subprocess against the simulator."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

import spendguard as sg
from spendguard._cli import main
from spendguard.testing import ProviderSimulator

REPO = Path(__file__).resolve().parents[1]
KEY = "orth_live_Sup3rSecretKey42"
ENV_VARS = (
    "ORTHOGONAL_API_KEY",
    "HYPER3D_API_KEY",
    "RODIN_API_KEY",
    "SPENDGUARD_ORTHOGONAL_URL",
    "SPENDGUARD_HYPER3D_URL",
    "SPENDGUARD_PROVIDER",
)
CHECK_KEYS = [
    "provider",
    "unit",
    "sufficient",
    "required",
    "available",
    "shortfall",
    "source",
    "floor",
]
TIMEOUT = 30

Result = subprocess.CompletedProcess[str]


@pytest.fixture
def sim() -> Iterator[ProviderSimulator]:
    """A simulator that accepts only KEY: $5.00 on Orthogonal, 10 Hyper3D credits."""
    with ProviderSimulator(api_key=KEY, orthogonal_usd="5.00", hyper3d_credits="10") as simulator:
        yield simulator


def environment(**values: str) -> dict[str, str]:
    """The machine's environment without spendguard's variables, plus ``values``."""
    env = {name: value for name, value in os.environ.items() if name not in ENV_VARS}
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(values)
    return env


def env_for(sim: ProviderSimulator, *providers: str, key: str = KEY) -> dict[str, str]:
    """An environment pointing the named providers at the simulator."""
    values: dict[str, str] = {}
    if "orthogonal" in providers:
        values |= {"ORTHOGONAL_API_KEY": key, "SPENDGUARD_ORTHOGONAL_URL": sim.url}
    if "hyper3d" in providers:
        values |= {"HYPER3D_API_KEY": key, "SPENDGUARD_HYPER3D_URL": sim.url}
    return environment(**values)


def spendguard(*args: str, env: dict[str, str]) -> Result:
    """Run ``python -m spendguard`` from the repository and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "spendguard", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        encoding="utf-8",
        timeout=TIMEOUT,
        check=False,
    )


def assert_one_error_line(result: Result, *mentions: str, as_json: bool = False) -> str:
    """Exit 2, one ``spendguard: error:`` line on stderr, no key; stdout empty, or under
    ``--json`` one object carrying the same message."""
    assert result.returncode == 2, result
    if as_json:
        assert json.loads(result.stdout)["error"] in result.stderr
    else:
        assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("spendguard: error: ")
    assert "Traceback" not in result.stderr
    assert KEY not in result.stderr
    for mention in mentions:
        assert mention in lines[0]
    return lines[0]


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- balance ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "shown"), [("orthogonal", "orthogonal: $5.00"), ("hyper3d", "hyper3d: 10 credits")]
)
def test_balance_text(sim: ProviderSimulator, provider: str, shown: str) -> None:
    """balance prints the provider's balance with its unit."""
    result = spendguard("balance", "--provider", provider, env=env_for(sim, provider))
    assert (result.returncode, result.stdout, result.stderr) == (0, shown + "\n", "")


def test_balance_json_orthogonal(sim: ProviderSimulator) -> None:
    """balance --json for Orthogonal: dollars as a two-decimal string."""
    result = spendguard("balance", "--json", env=env_for(sim, "orthogonal"))
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"provider": "orthogonal", "unit": "USD", "balance": "5.00"}


def test_balance_json_hyper3d_is_exact(sim: ProviderSimulator) -> None:
    """balance --json for Hyper3D keeps a fractional balance exact, as a string."""
    sim.hyper3d_balance = "12.5"
    result = spendguard("balance", "--json", env=env_for(sim, "hyper3d"))
    assert result.returncode == 0
    assert json.loads(result.stdout) == {
        "provider": "hyper3d",
        "unit": "credits",
        "balance": "12.5",
    }


# -- check -----------------------------------------------------------------------------------


def test_check_covered_exits_0(sim: ProviderSimulator) -> None:
    """check exits 0 and prints required, available and shortfall when the account covers it."""
    result = spendguard("check", "2.5", env=env_for(sim, "hyper3d"))
    assert result.returncode == 0, result
    assert "required:  2.5 credits" in result.stdout
    assert "available: 10 credits" in result.stdout
    assert "shortfall: 0 credits" in result.stdout


def test_check_short_exits_1(sim: ProviderSimulator) -> None:
    """check exits 1 with the shortfall when the account does not cover the amount."""
    result = spendguard("check", "12", env=env_for(sim, "hyper3d"))
    assert result.returncode == 1, result
    assert "NOT covered" in result.stdout
    assert "shortfall: 2 credits" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("provider", "amount", "code", "expected"),
    [
        ("orthogonal", "4.90", 0, ["orthogonal", "USD", True, "4.90", "5.00", "0.00", "remote"]),
        ("orthogonal", "5.25", 1, ["orthogonal", "USD", False, "5.25", "5.00", "0.25", "remote"]),
        ("hyper3d", "12", 1, ["hyper3d", "credits", False, "12", "10", "2", "remote"]),
    ],
)
def test_check_json_schema(
    sim: ProviderSimulator, provider: str, amount: str, code: int, expected: list[object]
) -> None:
    """check --json prints exactly the documented keys, in order, amounts as strings."""
    result = spendguard("check", amount, "--json", env=env_for(sim, provider))
    assert result.returncode == code, result
    assert len(result.stdout.splitlines()) == 1
    payload = json.loads(result.stdout)
    assert list(payload) == CHECK_KEYS
    assert list(payload.values()) == [*expected, "0.00" if provider == "orthogonal" else "0"]


def test_check_floor(sim: ProviderSimulator) -> None:
    """--floor is kept untouched: 3 credits do not fit in 10 with a floor of 8, 2 do."""
    env = env_for(sim, "hyper3d")
    short = spendguard("check", "3", "--floor", "8", "--json", env=env)
    assert short.returncode == 1
    assert json.loads(short.stdout)["available"] == "2"
    assert json.loads(short.stdout)["shortfall"] == "1"
    assert spendguard("check", "2", "--floor", "8", env=env).returncode == 0


@pytest.mark.parametrize(("amount", "mention"), [("abc", "not a number"), ("-1", "negative")])
def test_check_bad_amount(sim: ProviderSimulator, amount: str, mention: str) -> None:
    """A non-numeric or negative AMOUNT exits 2 before any request."""
    result = spendguard("check", amount, env=env_for(sim, "hyper3d"))
    assert_one_error_line(result, "AMOUNT", mention)
    assert sim.count() == 0


def test_refusal_by_the_floor_says_so(sim: ProviderSimulator) -> None:
    """When the balance covers AMOUNT but not with --floor, the output names the floor."""
    env = env_for(sim, "hyper3d")
    short = spendguard("check", "3", "--floor", "8", env=env)
    assert short.returncode == 1
    assert "floor:     8 credits (kept untouched; without it the account covers 3" in short.stdout
    beyond = spendguard("check", "12", "--floor", "8", env=env)
    assert "without it" not in beyond.stdout
    assert (
        json.loads(spendguard("check", "3", "--floor", "8", "--json", env=env).stdout)["floor"]
        == "8"
    )


def test_check_bad_floor(sim: ProviderSimulator) -> None:
    """A non-numeric --floor exits 2."""
    assert_one_error_line(spendguard("check", "1", "--floor", "x", env=env_for(sim, "hyper3d")))


# -- choosing the provider -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "provider"),
    [
        ("ORTHOGONAL_API_KEY", "orthogonal"),
        ("HYPER3D_API_KEY", "hyper3d"),
        ("RODIN_API_KEY", "hyper3d"),
    ],
)
def test_provider_from_environment(sim: ProviderSimulator, variable: str, provider: str) -> None:
    """Without --provider, the provider is the one whose key is set."""
    env = environment(
        **{variable: KEY, "SPENDGUARD_ORTHOGONAL_URL": sim.url, "SPENDGUARD_HYPER3D_URL": sim.url}
    )
    result = spendguard("balance", "--json", env=env)
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["provider"] == provider


@pytest.mark.parametrize("provider", ["orthogonal", "hyper3d", " Hyper3D "])
def test_provider_variable_picks_one(sim: ProviderSimulator, provider: str) -> None:
    """SPENDGUARD_PROVIDER picks the provider when both keys are set."""
    env = env_for(sim, "orthogonal", "hyper3d") | {"SPENDGUARD_PROVIDER": provider}
    result = spendguard("balance", "--json", env=env)
    assert json.loads(result.stdout)["provider"] == provider.strip().lower()


def test_provider_variable_unknown(sim: ProviderSimulator) -> None:
    """A SPENDGUARD_PROVIDER naming no provider exits 2, naming the variable."""
    env = env_for(sim, "hyper3d") | {"SPENDGUARD_PROVIDER": "acme"}
    assert_one_error_line(spendguard("balance", env=env), "SPENDGUARD_PROVIDER", "acme")


def test_both_keys_is_an_error(sim: ProviderSimulator) -> None:
    """Keys for both providers and no --provider: exit 2 saying to choose."""
    result = spendguard("balance", env=env_for(sim, "orthogonal", "hyper3d"))
    assert_one_error_line(result, "--provider")
    assert sim.count() == 0


def test_no_key_is_an_error() -> None:
    """No key at all: exit 2 naming the variables to set."""
    result = spendguard("check", "1", env=environment())
    assert_one_error_line(result, "ORTHOGONAL_API_KEY", "HYPER3D_API_KEY", "RODIN_API_KEY")


def test_chosen_provider_without_key(sim: ProviderSimulator) -> None:
    """--provider whose key is missing: exit 2 naming that provider's variable."""
    result = spendguard("balance", "--provider", "orthogonal", env=env_for(sim, "hyper3d"))
    assert_one_error_line(result, "ORTHOGONAL_API_KEY")


def test_unknown_provider(sim: ProviderSimulator) -> None:
    """An unknown --provider is one line on stderr, exit 2."""
    result = spendguard("balance", "--provider", "acme", env=env_for(sim, "hyper3d"))
    assert_one_error_line(result, "'acme'")


def test_no_command() -> None:
    """No command: exit 2 with a hint."""
    assert_one_error_line(spendguard(env=environment()), "spendguard demo")


# -- provider failures -----------------------------------------------------------------------


def test_unreachable_url() -> None:
    """A closed port: exit 2, one line naming the host, no traceback."""
    port = free_port()
    env = environment(HYPER3D_API_KEY=KEY, SPENDGUARD_HYPER3D_URL=f"http://127.0.0.1:{port}")
    result = spendguard("check", "1", "--retries", "0", env=env)
    assert_one_error_line(result, "could not reach", f"127.0.0.1:{port}")


@pytest.mark.parametrize("provider", ["orthogonal", "hyper3d"])
def test_wrong_key(sim: ProviderSimulator, provider: str) -> None:
    """A 401 exits 2, and neither the wrong key nor the right one is printed."""
    wrong = "orth_live_WrongWrongWrong99"
    result = spendguard("check", "1", "--json", env=env_for(sim, provider, key=wrong))
    line = assert_one_error_line(result, "401", as_json=True)
    assert wrong not in line


@pytest.mark.parametrize(
    ("provider", "route"),
    [("orthogonal", "POST /v1/credits/check"), ("hyper3d", "GET /api/v2/check_balance")],
)
def test_html_from_a_proxy(sim: ProviderSimulator, provider: str, route: str) -> None:
    """An HTML page with a 200 exits 2 with one line, even when the page echoes the key."""
    sim.fail(
        route,
        status=200,
        body=f"<html>\n<body>Proxy login {KEY}</body>\n</html>",
        headers={"Content-Type": "text/html"},
    )
    assert_one_error_line(spendguard("check", "1", env=env_for(sim, provider)), "not JSON")


def test_errors_in_json_mode(sim: ProviderSimulator) -> None:
    """With --json an error is one plain line on stderr and one JSON object on stdout."""
    sim.fail("GET /api/v2/check_balance", status=200, body=f"<html>proxy {KEY}</html>")
    result = spendguard("balance", "--json", env=env_for(sim, "hyper3d"))
    assert (result.returncode, len(result.stderr.splitlines())) == (2, 1)
    payload = json.loads(result.stdout)
    assert list(payload) == ["error", "type", "provider", "status"]
    assert payload["type"] == "ProviderError"
    assert payload["provider"] == "hyper3d"
    assert "not JSON" in payload["error"]
    assert KEY not in result.stdout + result.stderr


def test_usage_errors_in_json_mode() -> None:
    """A bad argument under --json is a JSON object on stdout too."""
    result = spendguard("check", "abc", "--json", env=environment())
    assert result.returncode == 2
    assert json.loads(result.stdout) == {
        "error": "AMOUNT is not a number: 'abc'",
        "type": "ValueError",
        "provider": None,
        "status": None,
    }


def test_timeout_bounds_a_hung_provider(sim: ProviderSimulator) -> None:
    """--timeout and --retries 0 give up on a hanging provider in about the timeout."""
    sim.slow("GET /api/v2/check_balance", 5)
    started = time.monotonic()
    result = spendguard(
        "check", "1", "--timeout", "0.5", "--retries", "0", env=env_for(sim, "hyper3d")
    )
    assert time.monotonic() - started < 4
    assert_one_error_line(result, "timed out", "127.0.0.1")
    assert sim.count("GET /api/v2/check_balance") == 1


@pytest.mark.parametrize(("retries", "code", "lookups"), [("0", 2, 1), ("1", 0, 2)])
def test_retries(sim: ProviderSimulator, retries: str, code: int, lookups: int) -> None:
    """--retries N retries a 503 N times: 0 gives up at once, 1 gets the second answer."""
    sim.fail("GET /api/v2/check_balance", status=503)
    result = spendguard("balance", "--retries", retries, env=env_for(sim, "hyper3d"))
    assert result.returncode == code, result
    assert sim.count("GET /api/v2/check_balance") == lookups


@pytest.mark.parametrize(
    "option", [("--timeout", "0"), ("--timeout", "nan"), ("--retries", "-1"), ("--retries", "11")]
)
def test_bad_lookup_options(sim: ProviderSimulator, option: tuple[str, str]) -> None:
    """A bad --timeout or --retries exits 2 before any request."""
    assert_one_error_line(spendguard("balance", *option, env=env_for(sim, "hyper3d")), option[0])
    assert sim.count() == 0


# -- global options --------------------------------------------------------------------------


def test_version() -> None:
    """--version prints the package version."""
    result = spendguard("--version", env=environment())
    assert (result.returncode, result.stdout) == (0, f"spendguard {sg.__version__}\n")


@pytest.mark.parametrize("command", ["", "balance", "check", "demo", "simulate"])
def test_help_has_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--help works on every command and shows an example (in-process: same parser)."""
    assert main([*command.split(), "--help"]) == 0
    shown = capsys.readouterr().out
    assert "example" in shown
    if command in ("balance", "check"):
        assert '"provider": ' in shown


def test_help_from_the_command_line() -> None:
    """`spendguard --help` exits 0 and lists every command."""
    result = spendguard("--help", env=environment())
    assert result.returncode == 0
    for command in ("balance", "check", "demo", "simulate"):
        assert command in result.stdout


def test_verbose_logs_lookups(sim: ProviderSimulator) -> None:
    """-v logs each HTTP lookup on stderr, without the key."""
    result = spendguard("-v", "check", "1", env=env_for(sim, "hyper3d"))
    assert result.returncode == 0
    assert "GET " in result.stderr
    assert "/api/v2/check_balance" in result.stderr
    assert KEY not in result.stderr + result.stdout


def test_main_returns_the_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    """main() can be called in-process and returns the exit code."""
    assert main(["--version"]) == 0
    assert main(["check", "abc"]) == 2
    assert capsys.readouterr().err.startswith("spendguard: error: AMOUNT")


def test_console_script(sim: ProviderSimulator) -> None:
    """The installed `spendguard` script runs the same command."""
    script = shutil.which("spendguard")
    if script is None:
        pytest.skip("the spendguard console script is not installed")
    result = subprocess.run(
        [script, "balance", "--json"],
        env=env_for(sim, "hyper3d"),
        capture_output=True,
        encoding="utf-8",
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["balance"] == "10"


# -- demo ------------------------------------------------------------------------------------


def test_demo() -> None:
    """demo needs no key, exits 0 quickly, shows the refusal and the lookups saved."""
    started = time.monotonic()
    result = spendguard("demo", env=environment())
    assert result.returncode == 0, result
    assert time.monotonic() - started < 15
    assert "Refused before it started" in result.stdout
    assert re.search(
        r"Shortfall: \d+(\.\d+)? credits?; paid requests sent for it: 0", result.stdout
    )
    lookups = re.search(r"HTTP balance lookups the simulator saw: (\d+)", result.stdout)
    decisions = re.search(r"Guarded decisions: +(\d+)", result.stdout)
    assert lookups is not None
    assert decisions is not None
    assert int(lookups[1]) < int(decisions[1])
    assert "Traceback" not in result.stderr


# -- simulate --------------------------------------------------------------------------------


def read_exports(process: subprocess.Popen[str]) -> dict[str, str]:
    """The variables a running `simulate` prints, read until the last one."""
    assert process.stdout is not None
    exports: dict[str, str] = {}
    while "SPENDGUARD_PROVIDER" not in exports:
        line = process.stdout.readline()
        assert line, "simulate ended before printing its exports"
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").strip().partition("=")
            exports[name] = value
    return exports


def start_simulate(*args: str, verbose: bool = False) -> subprocess.Popen[str]:
    """Start `spendguard simulate` on a free port."""
    return subprocess.Popen(
        [sys.executable, "-m", "spendguard", *["-v"] * verbose, "simulate", "--port", "0", *args],
        cwd=REPO,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding="utf-8",
    )


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.timeout(TIMEOUT)
def test_simulate_serves_until_sigint() -> None:
    """simulate binds loopback, prints working exports, serves, and exits 0 on Ctrl-C."""
    with start_simulate("--hyper3d-credits", "7", "--key", "k-123456") as process:
        try:
            exports = read_exports(process)
            url = exports["SPENDGUARD_HYPER3D_URL"]
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
            assert exports["SPENDGUARD_ORTHOGONAL_URL"] == url
            assert exports["ORTHOGONAL_API_KEY"] == exports["HYPER3D_API_KEY"] == "k-123456"
            with (
                requests.Session() as http,
                http.get(
                    f"{url}/api/v2/check_balance",
                    headers={"Authorization": "Bearer k-123456"},
                    timeout=5,
                ) as response,
            ):
                assert (response.status_code, response.json()) == (201, {"balance": 7})
            covered = spendguard("check", "7", "--provider", "hyper3d", env=environment(**exports))
            assert covered.returncode == 0, covered
        finally:
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=10)
        assert process.returncode == 0
        assert "Traceback" not in stderr
    port = int(url.rsplit(":", 1)[1])
    with socket.socket() as again:  # as a server would rebind it: only a live listener fails
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.timeout(TIMEOUT)
def test_simulate_stops_on_sigterm() -> None:
    """simulate exits 0 on SIGTERM too."""
    with start_simulate() as process:
        read_exports(process)
        process.terminate()
        process.communicate(timeout=10)
    assert process.returncode == 0


def test_simulate_port_in_use() -> None:
    """A port already taken: exit 2 with one line."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = spendguard("simulate", "--port", port, env=environment())
    assert_one_error_line(result, "cannot listen")


def stop(process: subprocess.Popen[str]) -> str:
    """SIGINT a running simulate; returns its stderr."""
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    return stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.timeout(TIMEOUT)
def test_simulate_exports_work_as_sourced() -> None:
    """After sourcing simulate's exports, a plain `spendguard balance` answers."""
    with start_simulate("--hyper3d-credits", "7") as process:
        try:
            exports = read_exports(process)
            assert exports["SPENDGUARD_PROVIDER"] == "hyper3d"
            result = spendguard("balance", env=environment(**exports))
        finally:
            stop(process)
    assert (result.returncode, result.stdout) == (0, "hyper3d: 7 credits\n")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.timeout(TIMEOUT)
def test_simulate_one_provider() -> None:
    """simulate --provider exports one provider's key and URL only; a negative balance works."""
    with start_simulate("--provider", "orthogonal", "--orthogonal-usd", "-0.50") as process:
        try:
            exports = read_exports(process)
            result = spendguard("balance", "--json", env=environment(**exports))
        finally:
            stop(process)
    assert set(exports) == {
        "ORTHOGONAL_API_KEY",
        "SPENDGUARD_ORTHOGONAL_URL",
        "SPENDGUARD_PROVIDER",
    }
    assert json.loads(result.stdout)["balance"] == "-0.50"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.timeout(TIMEOUT)
def test_simulate_verbose_logs_each_request() -> None:
    """simulate -v logs every request it serves on stderr, with its status, never the key."""
    with start_simulate("--key", KEY, verbose=True) as process:
        try:
            exports = read_exports(process)
            assert spendguard("balance", env=environment(**exports)).returncode == 0
        finally:
            stderr = stop(process)
    assert re.search(r"GET /api/v2/check_balance HTTP/1\.1\" 201", stderr), stderr
    assert KEY not in stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.timeout(TIMEOUT)
def test_simulate_faults() -> None:
    """--fail ROUTE=STATUSxN fails the next N requests; --slow ROUTE=SECONDS delays them."""
    with start_simulate(
        "--fail",
        "GET /api/v2/check_balance=503x1",
        "--slow",
        "/v1/credits/balance=0.6",
        "--fail",
        "POST /v1/credits/check=502",
    ) as process:
        try:
            exports = read_exports(process)
            hyper3d = environment(**exports)
            failed = spendguard("balance", "--retries", "0", env=hyper3d)
            served = spendguard("balance", "--retries", "0", env=hyper3d)
            orthogonal = environment(**exports | {"SPENDGUARD_PROVIDER": "orthogonal"})
            started = time.monotonic()
            slow = spendguard("balance", "--json", env=orthogonal)
            elapsed = time.monotonic() - started
            check = spendguard("check", "1", "--retries", "0", env=orthogonal)
        finally:
            stop(process)
    assert_one_error_line(failed, "503")
    assert (served.returncode, slow.returncode) == (0, 0)
    assert elapsed >= 0.6
    assert_one_error_line(check, "502")


@pytest.mark.parametrize(
    ("args", "mention"),
    [
        (("--orthogonal-usd", "1e999"), "--orthogonal-usd is implausibly large"),
        (("--hyper3d-credits", "nan"), "--hyper3d-credits must be finite"),
        (("--fail", "GET /x"), "ROUTE=VALUE"),
        (("--fail", "GET /x=700"), "100 to 599"),
        (("--slow", "GET /x=-1"), "positive"),
        (("--slow", "GET /x=1x0"), "positive count"),
    ],
)
def test_simulate_rejects_bad_values_up_front(args: tuple[str, str], mention: str) -> None:
    """Out-of-range balances and malformed faults exit 2 before serving, as check does."""
    result = spendguard("simulate", "--port", "0", *args, env=environment())
    assert_one_error_line(result, mention)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
def test_closed_pipe_is_silent() -> None:
    """`spendguard demo | head -3`: three lines, then exit 141 with nothing on stderr."""
    with subprocess.Popen(
        [sys.executable, "-m", "spendguard", "demo"],
        cwd=REPO,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
        process.stdout.close()
        stderr = process.stderr.read() if process.stderr else b""
        process.wait(timeout=TIMEOUT)
    assert lines[0].startswith(b"spendguard demo")
    assert (process.returncode, stderr) == (141, b"")
