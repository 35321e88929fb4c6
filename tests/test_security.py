"""API keys never leak: not in logs, exceptions, decisions, reprs; only sent over safe URLs."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator

import pytest

import spendguard as sg
from spendguard.testing import ProviderSimulator

from .conftest import FakeClock

KEY = "orth_live_Zq8vKEYLEAKx7Kp2mW4nB9tR3yL6"
"""Distinctive enough that any piece of it found in a text is a leak."""
PIECES = (KEY, KEY[4:], "Zq8vKEYLEAK", "KEYLEAKx7Kp2", "x7Kp2mW4nB9tR3yL6")

BALANCE = "GET /v1/credits/balance"
CHECK = "POST /v1/credits/check"
H3D_BALANCE = "GET /api/v2/check_balance"


@pytest.fixture
def keyed_sim() -> Iterator[ProviderSimulator]:
    """A simulator that accepts only KEY."""
    with ProviderSimulator(api_key=KEY, orthogonal_usd="5.00", hyper3d_credits="10") as sim:
        yield sim


def _texts_of(exc: BaseException) -> list[str]:
    """Every text an exception shows: str, repr, attributes, and the same for its causes."""
    texts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args)]
        texts += [repr(v) for v in vars(current).values()]
        current = current.__cause__ or current.__context__
    return texts


def _assert_clean(texts: list[str]) -> None:
    for text in texts:
        for piece in PIECES:
            assert piece not in text, f"key material {piece!r} in {text[:300]!r}"


def test_key_never_leaks_anywhere(
    keyed_sim: ProviderSimulator, caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    """Logs, exceptions, decisions and reprs stay free of the key across failures and echoes."""
    caplog.set_level(logging.DEBUG, logger="spendguard")
    caplog.set_level(logging.DEBUG, logger="urllib3")
    sim = keyed_sim
    decisions: list[sg.Decision] = []
    texts: list[str] = []
    errors: list[BaseException] = []

    def attempt(fn: object, *args: object) -> None:
        try:
            fn(*args)  # type: ignore[operator]
        except sg.SpendGuardError as exc:
            errors.append(exc)

    with (
        sg.Orthogonal(KEY, base_url=sim.url, timeout=1, retries=1) as orth,
        sg.Hyper3D(KEY, base_url=sim.url, timeout=1, retries=1) as h3d,
    ):
        strict = sg.SpendGuard(orth, on_decision=decisions.append, clock=clock)
        lenient = sg.SpendGuard(
            h3d, on_unavailable="allow", on_decision=decisions.append, clock=clock
        )
        stale = sg.SpendGuard(
            h3d, on_unavailable="stale", on_decision=decisions.append, clock=clock, ttl=5
        )

        @strict(cost="0.01")
        def search() -> str:
            return "ran"

        # Lookups, cache hits and a refusal.
        assert search() == "ran"
        assert search() == "ran"
        attempt(strict.require, 1000)
        texts += [repr(strict.check(1)), repr(stale.check(1)), repr(lenient.check(1))]
        with stale.spend(1) as hold:
            texts.append(repr(hold))
        texts.append(repr(hold))

        # 401 echoing the key in every field, on both providers.
        echo = f"invalid key {KEY}"
        sim.fail(CHECK, status=401, body={"success": False, "error": echo, "code": echo})
        strict.invalidate()
        attempt(search)
        sim.fail(H3D_BALANCE, status=401, body={"error": echo, "message": echo})
        attempt(h3d.fetch_balance)

        # 503 HTML echoing the key (retried, then unavailable), under three policies.
        html = f"<html><body><h1>503</h1><pre>Authorization: Bearer {KEY}</pre></body></html>"
        sim.fail("*", status=503, body=html, times=6)
        strict.invalidate()
        attempt(search)
        lenient.invalidate()
        texts.append(repr(lenient.check(1)))
        clock.advance(10)
        texts.append(repr(stale.check(1)))

        # 200 answers that carry the key where a number or a message should be.
        sim.fail(BALANCE, status=200, body={"success": False, "error": echo, "code": echo})
        attempt(orth.fetch_balance)
        sim.fail(BALANCE, status=200, body={"balance": KEY})
        attempt(orth.fetch_balance)
        sim.fail(H3D_BALANCE, status=200, body={"error": echo, "message": echo})
        attempt(h3d.fetch_balance)
        sim.fail(H3D_BALANCE, status=200, body={"balance": KEY})
        attempt(h3d.fetch_balance)
        sim.fail(H3D_BALANCE, status=200, body=f"not json {KEY}")
        attempt(h3d.fetch_balance)
        long_html = "<p>" + "x" * 100 + KEY + "</p>"  # the key straddles the snippet's cut
        sim.fail(H3D_BALANCE, status=404, body=long_html)
        attempt(h3d.fetch_balance)
        escaped = '{"error": "' + "".join(f"\\u{ord(c):04x}" for c in KEY) + '"}'
        sim.fail(H3D_BALANCE, status=200, body=escaped.encode())
        attempt(h3d.fetch_balance)

        texts += [repr(orth), repr(h3d), repr(strict), repr(lenient), repr(stale)]
        texts += [repr(orth._session), repr(strict.session())]
        texts += [repr(strict.stats), repr(lenient.stats), repr(stale.stats)]

    assert len(errors) == 11
    assert {type(e) for e in errors} == {
        sg.InsufficientCredits,
        sg.AuthenticationError,
        sg.BalanceUnavailable,
        sg.ProviderError,
    }
    assert {d.source for d in decisions} == {"cache", "remote", "fallback"}
    assert sim.count() >= 15
    for exc in errors:
        texts += _texts_of(exc)
    texts += [repr(d) for d in decisions]
    records = [r for r in caplog.records if r.name.startswith(("spendguard", "urllib3"))]
    assert any(r.name.startswith("urllib3") for r in records)
    assert any(r.levelno == logging.WARNING for r in records)
    texts += [r.getMessage() for r in records]
    texts += [caplog.text]
    _assert_clean(texts)


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost.evil.example",
        "http://127.0.0.1.nip.io:8080",
        "http://0x7f000001",
        "http://[::ffff:10.0.0.1]",
        "HTTP://api.orthogonal.com",
        "//api.orthogonal.com",
        "https://api.orthogonal.com?next=http://evil",
    ],
)
def test_keys_only_travel_over_https_or_loopback(url: str) -> None:
    """Anything that is not https:// or a loopback http:// is a ConfigurationError."""
    with pytest.raises(sg.ConfigurationError) as info:
        sg.Orthogonal(KEY, base_url=url)
    _assert_clean(_texts_of(info.value))


def test_unsafe_url_from_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain-http URL from SPENDGUARD_*_URL is refused like one passed in."""
    monkeypatch.setenv("HYPER3D_API_KEY", KEY)
    monkeypatch.setenv("SPENDGUARD_HYPER3D_URL", "http://hyper3d.internal")
    with pytest.raises(sg.ConfigurationError, match="refusing plain http") as info:
        sg.Hyper3D()
    _assert_clean(_texts_of(info.value))


def test_key_goes_only_to_the_configured_host(keyed_sim: ProviderSimulator) -> None:
    """The Bearer header reaches the simulator; a redirect elsewhere is never followed."""
    with ProviderSimulator(api_key=KEY) as other:
        keyed_sim.fail(
            H3D_BALANCE, status=307, headers={"Location": other.url + "/api/v2/check_balance"}
        )
        with (
            sg.Hyper3D(KEY, base_url=keyed_sim.url) as provider,
            pytest.raises(sg.ProviderError, match="redirect"),
        ):
            provider.fetch_balance()
        assert other.count() == 0
    sent = [r.headers.get("Authorization") for r in keyed_sim.requests]
    assert sent == [f"Bearer {KEY}"]


@pytest.mark.parametrize("echo", [KEY.lower(), KEY.upper(), KEY.swapcase()[3:30]])
def test_a_key_echoed_in_another_case_is_scrubbed(echo: str) -> None:
    """A provider may echo the key upper- or lower-cased: no run of it survives either way."""
    with ProviderSimulator(api_key=KEY) as sim, sg.Hyper3D(KEY, base_url=sim.url) as provider:
        sim.fail("*", status=401, body={"error": f"invalid api key: {echo}"})
        with pytest.raises(sg.AuthenticationError) as info:
            provider.fetch_balance()
    for text in _texts_of(info.value):
        folded = text.lower()
        assert all(piece.lower() not in folded for piece in PIECES), text


@pytest.mark.parametrize(
    "options",
    [{"timeout": -1}, {"base_url": "http://example.com"}, {"retries": -1}],
    ids=["timeout", "url", "retries"],
)
@pytest.mark.parametrize("provider", [sg.Orthogonal, sg.Hyper3D])
def test_a_refused_provider_renders_with_locals(
    provider: type[sg.Orthogonal | sg.Hyper3D], options: dict[str, object]
) -> None:
    """A constructor that refuses its options leaves a half-made provider in its frames:
    a traceback rendered with locals still renders, and shows no key."""
    with pytest.raises(sg.ConfigurationError) as info:
        provider(KEY, **options)  # type: ignore[arg-type]
    rendered = traceback.TracebackException.from_exception(info.value, capture_locals=True)
    frames = [frame for frame in rendered.stack if "spendguard" in frame.filename]
    assert frames
    _assert_clean([repr(frame.locals) for frame in frames])


def test_short_keys_do_not_garble_answers() -> None:
    """Scrubbing skips keys too short to be secret, which could match a balance's digits."""
    with (
        ProviderSimulator(api_key="10", hyper3d_credits="10") as sim,
        sg.Hyper3D("10", base_url=sim.url) as provider,
    ):
        assert provider.fetch_balance() == 10
