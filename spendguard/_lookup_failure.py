"""A failed balance lookup as plain data, so that a shared ledger can hand it to the
processes that waited for that lookup (never pickled: another process's bytes are data)."""

from __future__ import annotations

import json

from ._errors import AuthenticationError, BalanceUnavailable, ProviderError

_ERRORS: dict[str, type[ProviderError]] = {
    cls.__name__: cls for cls in (ProviderError, AuthenticationError, BalanceUnavailable)
}


def failure_record(exc: ProviderError) -> str:
    """``exc`` as a JSON object: its kind, message, provider, status and code."""
    kind = type(exc).__name__ if type(exc).__name__ in _ERRORS else "ProviderError"
    return json.dumps(
        {
            "type": kind,
            "message": exc.message,
            "provider": exc.provider,
            "status": exc.status,
            "code": exc.code,
        }
    )


def rebuild_failure(record: str) -> ProviderError:
    """The error another process's lookup met, rebuilt from :func:`failure_record`'s text;
    a record that cannot be read is a :class:`BalanceUnavailable`."""
    try:
        data = json.loads(record)
        cls = _ERRORS.get(data["type"], ProviderError)
        status = data.get("status")
        code = data.get("code")
        return cls(
            f"{data['message']} (met by another process's lookup)",
            provider=str(data["provider"]),
            status=status if isinstance(status, int) else None,
            code=code if isinstance(code, str) else None,
        )
    except (ValueError, KeyError, TypeError):
        return BalanceUnavailable("another process's lookup failed", provider="unknown")
