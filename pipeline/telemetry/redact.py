"""Keep credentials out of spans, manifests and logs.

Configs carry fsspec `storage_options`, object-store URLs with keys in them and cloud tokens; all of
those end up as span attributes, resource attributes and manifest fields unless stripped. `redact`
is applied to everything this package exports, and the runner applies it to manifests and logs.

Rules (deliberately conservative, but not so broad that a manifest loses its `cache_key`):
- a mapping key is secret-ish if it contains `storage_options`, starts with `aws_`, has a word
  among secret/token/password/passwd/credential(s)/authorization/apikey/passphrase, or is `key`
  itself or `<api|access|secret|private|client|account|sas|session|signing|encryption|master>_key`.
  Its whole value (even a nested dict) becomes REDACTED. `cache_key`, `row_key` stay readable.
- in every string: URL userinfo (`s3://AKIA..:secret@host`, `https://user:pw@h`), secret-ish query
  parameters (`?X-Amz-Signature=..`, `&token=..`), AWS access key ids and `Bearer ..` are masked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***REDACTED***"

_SECRET_WORDS = {
    "secret",
    "secrets",
    "token",
    "password",
    "passwd",
    "credential",
    "credentials",
    "authorization",
    "apikey",
    "passphrase",
    "accesskey",
    "secretkey",
    "privatekey",
}
_KEY_PREFIXES = {
    "api",
    "access",
    "secret",
    "private",
    "client",
    "account",
    "sas",
    "session",
    "signing",
    "encryption",
    "master",
}

_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^@/\s?#:]*(?::[^@\s]*)?@")
_QUERY_SECRET = re.compile(
    r"(?P<name>[?&;][\w.\-]*?(?:token|secret|password|signature|credential|apikey|api_key|sig|key)"
    r"[\w.\-]*=)[^&#\s]+",
    re.IGNORECASE,
)
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
_BEARER = re.compile(r"(?P<kind>\b(?:Bearer|Basic|Token)\s+)[A-Za-z0-9._~+/=\-]{8,}")


def _words(key: str) -> list[str]:
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).lower()
    return [w for w in re.split(r"[^a-z0-9]+", snake) if w]


def is_secret_key(key: Any) -> bool:
    """True when a mapping key names a credential (see module docstring for the rules)."""
    if not isinstance(key, str):
        return False
    lowered = key.lower()
    if "storage_options" in lowered or "storageoptions" in lowered:
        return True
    words = _words(key)
    if any(w == "aws" for w in words[:1]) or re.search(r"(^|[.\-/])aws_", lowered):
        return True
    if any(w in _SECRET_WORDS for w in words):
        return True
    if words == ["key"]:
        return True
    return any(w == "key" and i > 0 and words[i - 1] in _KEY_PREFIXES for i, w in enumerate(words))


def redact_text(text: str) -> str:
    """Mask credentials that appear inside a free-text string (URLs, log lines, error messages)."""
    if not text:
        return text
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['name']}{REDACTED}", text)
    text = _AWS_KEY_ID.sub(REDACTED, text)
    return _BEARER.sub(lambda m: f"{m['kind']}{REDACTED}", text)


def span_attributes(attributes: Mapping | None) -> dict:
    """Redacted attributes in the types OTel accepts: nested mappings become dotted keys
    (`{"a": {"b": 1}}` → `{"a.b": 1}`), None is dropped, other objects become strings.

    Without this the SDK silently drops a dict- or Path-valued attribute with only a warning.
    """
    out: dict = {}

    def put(key: str, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, Mapping):
            for k, v in value.items():
                put(f"{key}.{k}", v)
        elif isinstance(value, (list, tuple)):
            items = [v if isinstance(v, (str, bool, int, float)) else str(v) for v in value]
            same = len({type(v) for v in items}) <= 1
            out[key] = tuple(items) if same else tuple(str(v) for v in items)
        elif isinstance(value, (str, bool, int, float)):
            out[key] = value
        else:
            out[key] = redact_text(str(value))

    for key, value in redact(dict(attributes or {})).items():
        put(str(key), value)
    return out


def redact(obj: Any) -> Any:
    """Deep copy of `obj` with secrets masked. Mappings become dicts; lists and tuples keep type."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, Mapping):
        return {
            k: REDACTED if is_secret_key(k) and v is not None else redact(v) for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple, set, frozenset)):
        return type(obj)(redact(v) for v in obj)
    return obj
