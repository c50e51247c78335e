"""CSRF protection for the action POSTs: a double-submitted per-browser token, plus Origin.

The console sets a random token in a ``SameSite=Strict``, ``HttpOnly`` cookie and writes the same
token into every action form; a POST is accepted only when the form's token equals the cookie's
(compared in constant time) and, when the browser sends an ``Origin``, that origin is the
console's own. Another site can neither read the cookie nor make the browser send it.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["COOKIE", "FIELD", "check", "ensure_cookie", "token_of"]

COOKIE = "gc_csrf"
FIELD = "csrf"


def token_of(request: Request) -> str:
    """The browser's token, or a new one (set it with :func:`ensure_cookie`)."""
    existing = request.cookies.get(COOKIE, "")
    if len(existing) >= 32:
        return existing
    # One new token per request that lacks one: the page's forms and its cookie carry the same.
    token: str | None = getattr(request.state, "csrf_token", None)
    if token is None:
        token = secrets.token_urlsafe(32)
        request.state.csrf_token = token
    return token


def ensure_cookie(request: Request, response: Response) -> None:
    token = token_of(request)
    if request.cookies.get(COOKIE) != token:
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")


def check(request: Request, submitted: str) -> str | None:
    """Why the POST is refused, or None when its token and origin are right."""
    cookie = request.cookies.get(COOKIE, "")
    if len(cookie) < 32 or not hmac.compare_digest(cookie.encode(), submitted.encode()):
        return "the form's CSRF token does not match this browser's (reload the page)"
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        host = request.headers.get("host", "")
        if urlsplit(origin).netloc != host:
            return "the request came from another site"
    return None
