"""Credentials: keys written into URLs are redacted wherever a URL is shown or saved.

Standard library only, so the config (which must import fast) can redact a URL before it is
written to `config.yaml`.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_KEY_NAMES = {"key", "apikey", "api_key", "api-key", "token", "access_token", "auth", "sig", "signature", "password",
              "passwd", "pwd", "secret", "client_secret", "code", "credential", "session"}
_KEY_ENDINGS = ("key", "token", "secret", "signature", "password", "credential")


def redact_url(url: str) -> str:
    """`url` with credentials replaced by `***`: the user-info part (`user:key@`) and the values of
    key-like query parameters (key, api_key, token, sig, password, ... and names ending in key,
    token, secret, signature, password, credential). `${VAR}` references are kept: they are names."""
    parts = urlsplit(str(url))
    netloc = parts.netloc.rpartition("@")[2]
    netloc = f"***@{netloc}" if "@" in parts.netloc else netloc
    query = "&".join(f"{p.partition('=')[0]}=***" if _param_secret(p) else p for p in parts.query.split("&"))
    return urlunsplit((parts.scheme, netloc, parts.path, query if parts.query else "", parts.fragment))


def _param_secret(param: str) -> str:
    """The value of a key-like query parameter (`name=value`), else ""."""
    name, eq, value = param.partition("=")
    low = unquote(name).lower()
    if eq and value and not ENV_REF.fullmatch(value) and (low in _KEY_NAMES or low.endswith(_KEY_ENDINGS)):
        return value
    return ""


def url_secrets(url: str) -> list:
    """The credential values written literally in `url` (user-info password, key-like parameters)."""
    parts = urlsplit(url)
    values = [_param_secret(p) for p in parts.query.split("&")] + [parts.password or ""]
    return [v for value in values if value for v in {value, unquote(value)}]
