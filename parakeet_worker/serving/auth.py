"""The one token check, for every route and dialect: which tokens a request offers, and whether one
matches.

A request offers at most one ``Authorization`` token (``Bearer`` or Deepgram's ``Token`` scheme), one
``?token=`` and one subprotocol key (browsers cannot set headers on a WebSocket); any of them may
match (a proxy may put its own credentials in the header). A request that repeats ``token`` offers
nothing, so one request is at most two guesses; comparisons take constant time.
"""

from __future__ import annotations

import hmac

from aiohttp import web


def offered_tokens(request: web.Request) -> list[str]:
    query = request.query.getall("token", [])  # parsed: ``%74oken`` is ``token`` here too
    if len(query) > 1:
        return []
    offered = list(query)
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() in ("bearer", "token") and credentials.strip():  # "Token": Deepgram's clients
        offered.append(credentials.strip())
    key = subprotocol_key(request)
    if key:
        offered.append(key)
    return offered


def subprotocol_key(request: web.Request) -> str:
    """A key browsers can only send as a WebSocket subprotocol: Deepgram's ``token, <key>`` or
    OpenAI's ``openai-insecure-api-key.<key>``; "" when there is none."""
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    for i, p in enumerate(protocols):
        if p.startswith("openai-insecure-api-key."):
            return p[len("openai-insecure-api-key.") :]
        if p == "token" and i + 1 < len(protocols):
            return protocols[i + 1]
    return ""


def token_matches(offered: list[str], valid: list[str]) -> bool:
    """One of ``offered`` is one of ``valid`` (an empty ``valid`` matches nothing)."""
    return any(hmac.compare_digest(o.encode(), v.encode()) for o in offered for v in valid)


def authorized(request: web.Request, token: str) -> bool:
    """No token configured, or the request offers it."""
    return not token or token_matches(offered_tokens(request), [token])
