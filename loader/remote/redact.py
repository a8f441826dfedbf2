"""``redact``: the one place that hides secrets carried in URLs before they reach a message.

Every error message, log line and service answer that may contain a location passes through
``redact`` (docs/architecture.md, "Remote reads"). It rewrites, anywhere in a text:

- user info: ``http://user:pass@host/x`` -> ``http://***@host/x``;
- the values of query parameters that look like signatures or credentials (``X-Amz-Signature``,
  ``X-Amz-Credential``, ``X-Amz-Security-Token``, ``X-Goog-Signature``, ``sig``, ``signature``,
  ``token``, ``access_token``, ``key``, ``api_key``, ``password``, ``secret`` and any name holding
  ``token``, ``secret``, ``signature``, ``password`` or ``credential``) -> ``NAME=***``.

Everything else is kept, so a message still says which file it is about. Pure string work; the
URLs the loader fetches are never changed, only what it says about them.
"""

from __future__ import annotations

import re

__all__ = ["REDACTED", "redact"]

REDACTED = "***"
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#@]*@")
_PARAM = re.compile(r"(?P<lead>[?&])(?P<name>[^=&#\s?]+)=(?P<value>[^&#\s]*)")
_SECRET_NAMES = frozenset({
    "sig", "signature", "token", "access_token", "id_token", "key", "api_key", "apikey",
    "password", "passwd", "pwd", "secret", "client_secret", "auth", "authorization",
    "x-amz-signature", "x-amz-credential", "x-amz-security-token", "x-goog-signature",
    "x-goog-credential",
})  # fmt: skip
_SECRET_PARTS = ("token", "secret", "signature", "password", "credential")


def _secret(name: str) -> bool:
    lowered = name.lower()
    return lowered in _SECRET_NAMES or any(part in lowered for part in _SECRET_PARTS)


def _param(match: re.Match[str]) -> str:
    if match["value"] and _secret(match["name"]):
        return f"{match['lead']}{match['name']}={REDACTED}"
    return match[0]


def redact(text: object) -> str:
    """``text`` (a URL, a message holding URLs, or anything ``str()`` turns into one) with the
    secrets of every URL in it hidden (see the module docstring). A hidden value runs to the
    next ``&``, ``#`` or white space, quotes included: what may be secret is never cut short."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", str(text))
    return _PARAM.sub(_param, text)
