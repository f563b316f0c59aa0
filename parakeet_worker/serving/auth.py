"""The one token check, for every route: which tokens a request offers, and whether one matches.

A request offers at most one ``Authorization: Bearer`` token and one ``?token=`` (either may match:
a proxy may put its own credentials in the header). A request that repeats ``token`` offers
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
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        offered.append(auth[7:].strip())
    return offered


def token_matches(offered: list[str], valid: list[str]) -> bool:
    """One of ``offered`` is one of ``valid`` (an empty ``valid`` matches nothing)."""
    return any(hmac.compare_digest(o.encode(), v.encode()) for o in offered for v in valid)


def authorized(request: web.Request, token: str) -> bool:
    """No token configured, or the request offers it."""
    return not token or token_matches(offered_tokens(request), [token])
