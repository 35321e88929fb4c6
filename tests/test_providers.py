"""The bundled providers over real HTTP against the simulator: answers, units and errors."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

import spendguard as sg
from spendguard.testing import ProviderSimulator

BALANCE = "GET /v1/credits/balance"
CHECK = "POST /v1/credits/check"
H3D_BALANCE = "GET /api/v2/check_balance"


def test_hyper3d_balance_is_exact(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """A fractional Hyper3D balance is read exactly, never truncated."""
    sim.hyper3d_balance = "12.5"
    assert hyper3d.fetch_balance() == Decimal("12.5")


def test_hyper3d_check_compares_locally(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """Hyper3D's check is a balance lookup compared with the amount."""
    check = hyper3d.check("10.5")
    assert (check.sufficient, check.available, check.shortfall) == (
        False,
        Decimal(10),
        Decimal("0.5"),
    )
    assert check.unit == "credits"
    assert check.source == "remote"
    assert sim.count(H3D_BALANCE) == 1


@pytest.mark.parametrize("error", [None, "", "OK"])
def test_hyper3d_success_error_values(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, error: str | None
) -> None:
    """null, "" and "OK" in Hyper3D's error field mean success, with any 2xx status."""
    sim.fail(H3D_BALANCE, status=200, body={"error": error, "balance": 3})
    assert hyper3d.fetch_balance() == 3


def test_hyper3d_error_string_is_provider_error(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D
) -> None:
    """Any other error string with a 2xx is a ProviderError carrying the message."""
    sim.fail(H3D_BALANCE, status=201, body={"error": "NO_SUBSCRIPTION", "message": "Plan expired"})
    with pytest.raises(sg.ProviderError, match=r"NO_SUBSCRIPTION.*Plan expired") as info:
        hyper3d.fetch_balance()
    assert info.value.code == "NO_SUBSCRIPTION"


@pytest.mark.parametrize(
    "text", ["$5.00", "$1,234.56", "-$0.50", "$-0.50", " $5 ", "$0.001", "7.25"]
)
def test_orthogonal_balance_strings(
    sim: ProviderSimulator, orthogonal: sg.Orthogonal, text: str
) -> None:
    """Every documented and observed dollar-string shape parses exactly."""
    sim.fail(BALANCE, status=200, body={"balance": text})
    expected = Decimal(text.replace("$", "").replace(",", "").strip())
    assert orthogonal.fetch_balance() == expected


@pytest.mark.parametrize(
    "body",
    [
        {"balance": "five dollars"},
        {"balance": "$5.00.00"},
        {"balance": None},
        {"balance": True},
        {"balance": {"usd": 5}},
        {"nothing": 1},
        ["$5.00"],
        {"balance": "NaN"},
    ],
)
def test_orthogonal_malformed_balance(
    sim: ProviderSimulator, orthogonal: sg.Orthogonal, body: object
) -> None:
    """A malformed balance is a clear ProviderError, not a crash."""
    sim.fail(BALANCE, status=200, body=body)  # type: ignore[arg-type]
    with pytest.raises(sg.ProviderError, match="malformed"):
        orthogonal.fetch_balance()


@pytest.mark.parametrize("scale", [100_000, 100])
def test_orthogonal_learns_the_cents_scale(sim: ProviderSimulator, scale: int) -> None:
    """The *Cents scale is learned from balanceCents against the dollar balance."""
    sim.units_per_dollar = scale
    with sg.Orthogonal(sim.api_key, base_url=sim.url) as provider:
        assert provider.units_per_dollar is None
        check = provider.check("1.25")
        assert provider.units_per_dollar == scale
        assert check.sufficient
        assert check.available == Decimal("5.00")
        provider.check("1.25")
    asked = [r.json()["amountCents"] for r in sim.requests if r.route == CHECK]
    assert asked == [125_000, 1.25 * scale]
    assert sim.count(BALANCE) == 1


def test_orthogonal_scale_stays_unknown_on_zero_balance(sim: ProviderSimulator) -> None:
    """With nothing to compare, the scale stays unknown and 100,000 (over-asking) is assumed."""
    sim.orthogonal_balance = 0
    sim.units_per_dollar = 100
    with sg.Orthogonal(sim.api_key, base_url=sim.url) as provider:
        check = provider.check("0.01")
        assert provider.units_per_dollar is None
        assert not check.sufficient
        assert [r.json()["amountCents"] for r in sim.requests if r.route == CHECK] == [1000]


def test_orthogonal_pinned_scale_skips_learning(sim: ProviderSimulator) -> None:
    """units_per_dollar= pins the scale: checked once against the balance, amounts rounded up."""
    sim.units_per_dollar = 100
    with sg.Orthogonal(sim.api_key, base_url=sim.url, units_per_dollar=100) as provider:
        check = provider.check("0.001")
        provider.check("0.001")
    assert check.sufficient
    assert sim.count(BALANCE) == 1
    assert [r.json()["amountCents"] for r in sim.requests if r.route == CHECK] == [1, 1]


def test_orthogonal_check_uses_precise_balance_cents(sim: ProviderSimulator) -> None:
    """balanceCents gives sub-cent precision that the 2-decimal string loses."""
    sim.orthogonal_balance = "0.004"
    with sg.Orthogonal(sim.api_key, base_url=sim.url, units_per_dollar=100_000) as provider:
        check = provider.check("0.005")
    assert check.available == Decimal("0.004")
    assert not check.sufficient


def test_orthogonal_remote_refusal_is_respected(
    sim: ProviderSimulator, orthogonal: sg.Orthogonal
) -> None:
    """When the provider says insufficient, the check says so even if the numbers fit."""
    sim.fail(
        CHECK,
        status=200,
        body={"sufficient": False, "balanceCents": 500000, "requiredCents": 1, "shortfallCents": 0},
    )
    sim.fail(BALANCE, status=200, body={"balance": "$5.00"})
    assert not orthogonal.check("0.01").sufficient


@pytest.mark.parametrize(
    "body",
    [
        {"sufficient": "yes", "balanceCents": 1},
        {"sufficient": True, "balanceCents": "1"},
        {"sufficient": True, "balanceCents": 1.5},
        {"sufficient": True},
    ],
)
def test_orthogonal_malformed_check(
    sim: ProviderSimulator, orthogonal: sg.Orthogonal, body: dict[str, object]
) -> None:
    """A check answer of the wrong shape is a ProviderError."""
    sim.fail(CHECK, status=200, body=body)
    with pytest.raises(sg.ProviderError, match="malformed check answer"):
        orthogonal.check(1)


def test_orthogonal_success_false_with_200(
    sim: ProviderSimulator, orthogonal: sg.Orthogonal
) -> None:
    """success: false is a failure even with a 2xx status."""
    sim.fail(BALANCE, status=200, body={"success": False, "error": "Boom", "code": "BAD_REQUEST"})
    with pytest.raises(sg.ProviderError, match="Boom") as info:
        orthogonal.fetch_balance()
    assert info.value.code == "BAD_REQUEST"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, sg.AuthenticationError),
        (403, sg.AuthenticationError),
        (404, sg.ProviderError),
        (400, sg.ProviderError),
        (429, sg.BalanceUnavailable),
        (500, sg.BalanceUnavailable),
        (502, sg.BalanceUnavailable),
        (503, sg.BalanceUnavailable),
    ],
)
def test_status_codes_map_to_errors(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, status: int, error: type[Exception]
) -> None:
    """Each status maps to one documented error class carrying the status."""
    sim.fail(H3D_BALANCE, status=status, times=5)
    with pytest.raises(error) as info:
        hyper3d.fetch_balance()
    assert type(info.value) is error
    assert info.value.status == status  # type: ignore[attr-defined]


def test_transient_errors_are_retried(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """A 503 then a 429 with Retry-After are retried; the third attempt answers."""
    sim.fail(H3D_BALANCE, status=503)
    sim.fail(H3D_BALANCE, status=429, headers={"Retry-After": "0"})
    assert hyper3d.fetch_balance() == 10
    assert sim.count(H3D_BALANCE) == 3


def test_retries_give_up(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """After the retries a persistent 503 is BalanceUnavailable; attempts are bounded."""
    sim.fail(H3D_BALANCE, status=503, times=10)
    with pytest.raises(sg.BalanceUnavailable, match="HTTP 503"):
        hyper3d.fetch_balance()
    assert sim.count(H3D_BALANCE) == 3


def test_html_from_a_proxy(sim: ProviderSimulator, orthogonal: sg.Orthogonal) -> None:
    """A 200 HTML page is a ProviderError that says it was not JSON."""
    sim.fail(
        BALANCE,
        status=200,
        body="<html><body>Login</body></html>",
        headers={"Content-Type": "text/html"},
    )
    with pytest.raises(sg.ProviderError, match="not JSON \\(text/html\\)"):
        orthogonal.fetch_balance()


def test_502_html_is_unavailable(sim: ProviderSimulator, orthogonal: sg.Orthogonal) -> None:
    """A 502 HTML page (after retries) is BalanceUnavailable with a readable snippet."""
    sim.fail(BALANCE, status=502, body="<html>Bad Gateway</html>", times=5)
    with pytest.raises(sg.BalanceUnavailable, match=r"HTTP 502.*Bad Gateway"):
        orthogonal.fetch_balance()


@pytest.mark.parametrize("body", [b"", b"{", b"[1, 2]", b"null", b'{"balance": NaN}'])
def test_broken_json(sim: ProviderSimulator, hyper3d: sg.Hyper3D, body: bytes) -> None:
    """Empty, truncated, non-object and non-standard JSON are ProviderErrors."""
    sim.fail(H3D_BALANCE, status=200, body=body)
    with pytest.raises(sg.ProviderError):
        hyper3d.fetch_balance()


def test_timeout_is_unavailable(sim: ProviderSimulator) -> None:
    """A response slower than the timeout is BalanceUnavailable after retries."""
    sim.slow(H3D_BALANCE, 1.0, times=3)
    with (
        sg.Hyper3D(sim.api_key, base_url=sim.url, timeout=0.2) as provider,
        pytest.raises(sg.BalanceUnavailable, match="timed out"),
    ):
        provider.fetch_balance()


def test_dropped_connection_is_unavailable(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """A connection closed without an answer is BalanceUnavailable."""
    sim.fail(H3D_BALANCE, drop=True, times=5)
    with pytest.raises(sg.BalanceUnavailable, match="could not reach"):
        hyper3d.fetch_balance()


def test_connection_refused_is_unavailable(sim: ProviderSimulator) -> None:
    """Nothing listening is BalanceUnavailable."""
    url = sim.url
    sim.stop()
    with (
        sg.Hyper3D("k" * 20, base_url=url) as provider,
        pytest.raises(sg.BalanceUnavailable, match="could not reach"),
    ):
        provider.fetch_balance()


def test_oversized_answer_is_refused(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """A multi-megabyte body is an error, not a memory spike."""
    sim.fail(H3D_BALANCE, status=200, body=b'{"balance": 1, "pad": "' + b"x" * 3_000_000 + b'"}')
    with pytest.raises(sg.ProviderError, match="larger than"):
        hyper3d.fetch_balance()


def test_redirects_are_not_followed(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """A redirect is refused: the key is never sent to another URL."""
    sim.fail(H3D_BALANCE, status=302, headers={"Location": "http://127.0.0.1:9/steal"})
    with pytest.raises(sg.ProviderError, match="redirect not followed"):
        hyper3d.fetch_balance()
    assert sim.count() == 1


def test_missing_key_names_the_variables() -> None:
    """A missing key is a ConfigurationError naming what to set."""
    with pytest.raises(sg.ConfigurationError, match="HYPER3D_API_KEY or RODIN_API_KEY"):
        sg.Hyper3D()
    with pytest.raises(sg.ConfigurationError, match="ORTHOGONAL_API_KEY"):
        sg.Orthogonal()


def test_keys_and_urls_from_the_environment(
    sim: ProviderSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys and base URLs come from the documented variables, RODIN_API_KEY as a fallback."""
    monkeypatch.setenv("RODIN_API_KEY", sim.api_key)
    monkeypatch.setenv("SPENDGUARD_HYPER3D_URL", sim.url)
    monkeypatch.setenv("ORTHOGONAL_API_KEY", sim.api_key)
    monkeypatch.setenv("SPENDGUARD_ORTHOGONAL_URL", sim.url + "/")
    with sg.Hyper3D() as h3d, sg.Orthogonal() as orth:
        assert h3d.fetch_balance() == 10
        assert orth.fetch_balance() == Decimal("5.00")
        assert orth.base_url == sim.url


def test_defaults_are_the_public_apis() -> None:
    """Without a URL the providers talk to the vendors' documented hosts."""
    assert sg.Hyper3D("key").base_url == "https://api.hyper3d.com"
    assert sg.Orthogonal("key").base_url == "https://api.orthogonal.com"


@pytest.mark.parametrize(
    "url",
    [
        "http://api.hyper3d.com",
        "http://10.0.0.5:8080",
        "ftp://127.0.0.1",
        "https://user:pw@host",
        "not a url",
        "http://[::1",
    ],
)
def test_unsafe_base_urls_are_refused(url: str) -> None:
    """Plain http:// is only for loopback; other schemes and credentials are refused."""
    with pytest.raises(sg.ConfigurationError):
        sg.Hyper3D("key", base_url=url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:1", "http://localhost:1", "http://[::1]:1"])
def test_loopback_http_is_allowed(url: str) -> None:
    """http:// is accepted for 127.0.0.1, localhost and ::1."""
    assert sg.Hyper3D("key", base_url=url).base_url == url


@pytest.mark.parametrize(
    "key", ["", "   ", "ab cd", "ab\ncd", "ab\tcd", "hk_live\u2013abcdef", "“abcdefgh”", "ab\x7fcd"]
)
@pytest.mark.parametrize("provider", [sg.Orthogonal, sg.Hyper3D])
def test_bad_keys_are_refused(provider: type[sg.Orthogonal | sg.Hyper3D], key: str) -> None:
    """Empty keys, keys with whitespace (header injection) and keys no header can carry (a
    pasted dash or curly quote) are refused when the provider is made, never at a call."""
    with pytest.raises(sg.ConfigurationError, match="API key") as info:
        provider(key)
    assert key.strip() not in str(info.value) or not key.strip()


def test_keys_never_leak(sim: ProviderSimulator, spendguard_logs: pytest.LogCaptureFixture) -> None:
    """The key is absent from reprs, error messages and log lines, even when echoed back."""
    sim.api_key = "orth_live_SECRETSECRETSECRET"
    provider = sg.Orthogonal("orth_live_SECRETSECRETSECRET", base_url=sim.url)
    guard = sg.SpendGuard(provider, on_unavailable="allow")
    texts = [repr(provider), repr(guard)]
    sim.fail(
        "*",
        status=401,
        body={"success": False, "error": "bad key orth_live_SECRETSECRETSECRET", "code": "X"},
    )
    with pytest.raises(sg.AuthenticationError) as info:
        provider.check(1)
    texts.append(str(info.value))
    sim.fail("*", status=503, body="<p>down orth_live_SECRETSECRETSECRET</p>", times=20)
    with pytest.raises(sg.BalanceUnavailable) as info2:
        provider.fetch_balance()
    texts.append(str(info2.value))
    guard.check(1)
    texts.extend(r.getMessage() for r in spendguard_logs.records)
    logging.getLogger("spendguard").info("probe")
    assert len(spendguard_logs.records) >= 2
    for text in texts:
        assert "SECRETSECRET" not in text
    assert "orth…" in repr(provider)
    provider.close()
