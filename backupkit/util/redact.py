"""Passwords out of anything shown: URLs in messages lose their userinfo password and secret
query values, whatever else is wrong with them (a bad scheme, an unclosed bracket, no host).

Pure string work, no urllib: a URL that urllib refuses must be redacted all the same.
"""

from __future__ import annotations

import re
import unicodedata

HIDDEN = "***"

# scheme://user:password@ ... ; the password runs to the last "@" of the token (it may hold "/")
_USERINFO = re.compile(r"(?P<head>(?:[A-Za-z][A-Za-z0-9+.\-]*:)?//[^\s:/@'\"]*:)(?P<pw>[^\s'\"]*)@")
_SECRET_QUERY = re.compile(r"(?P<key>[?&;](?:[^=&#\s'\"]*(?:password|passwd|secret|token|"
                           r"access_key|credential)[^=&#\s'\"]*)=)(?P<value>[^&#\s'\"]*)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """url with its password (userinfo after the first ':') and secret query values hidden.

    Works on anything: with or without a scheme (user:secret@host), malformed or not."""
    if not isinstance(url, str):
        url = str(url)
    scheme_end = url.find("://")
    start = scheme_end + 3 if scheme_end >= 0 else 0
    rest = url[start:]
    at = rest.rfind("@")
    if at >= 0:
        userinfo = rest[:at]
        colon = userinfo.find(":")
        if colon >= 0 and (scheme_end >= 0 or "/" not in userinfo[:colon]):
            rest = userinfo[:colon + 1] + HIDDEN + rest[at:]
    return _SECRET_QUERY.sub(lambda m: m.group("key") + HIDDEN, url[:start] + rest)


def redact_text(text: str) -> str:
    """Every URL-like password in free text hidden (the net under every message shown)."""
    text = _USERINFO.sub(lambda m: m.group("head") + HIDDEN + "@", text)
    return _SECRET_QUERY.sub(lambda m: m.group("key") + HIDDEN, text)


def has_control(text: str) -> bool:
    """True when text holds a control or line-breaking character (never part of a URL or name)."""
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text)


def printable(text: str) -> str:
    """text on one line: control and line-breaking characters shown as escapes (\\r, \\x0c)."""
    if not has_control(text):
        return text
    return "".join(repr(c)[1:-1] if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c
                   for c in text)
