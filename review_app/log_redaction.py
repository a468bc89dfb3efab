"""Bearer tokens never reach a log line, whichever logger writes it and however the token is spelled.

Browsers cannot set headers on tile requests and websockets, so those carry the token in the query
(`?access_token=`); uvicorn's access log, its websocket handshake lines (`uvicorn.error`), an exception
message quoting a URL, any library's debug output may then repeat it. Filters on single loggers or handlers
miss some of them (a filter on a logger does not see its children's records, handlers come and go), so the
redaction sits in the one place every record passes: the log record factory. Each record's message is
formatted once and rewritten when it holds a secret:

- a query parameter whose name, percent-decoded as the server decodes it (`access%5Ftoken`, `%61ccess_token`),
  names a token: its value becomes `***`;
- anything shaped like a token: a JWT (`eyJ...`), a personal API token (`pearl_...`), `Bearer <x>`, also when
  it is percent-encoded inside a longer word.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

REDACTED = "***"
SECRET_PARAMS = frozenset({"access_token", "refresh_token", "id_token", "token", "client_secret"})
# name=value inside a query string or a log line; the name may itself be percent-encoded.
# Bounded repeats keep every pattern linear in the line's length: a log line is attacker-shaped (a 10 kB URL of
# name characters cost ~1 s with unbounded ones). The name may not start inside a longer run of name characters.
_PARAM = re.compile(r"(?<![A-Za-z0-9%_.\-])(?P<name>[A-Za-z0-9%_.\-]{1,64})(?P<eq>=|%3[Dd])(?P<value>[^\s&#\"'<>?=]+)")
_B64 = r"(?<![A-Za-z0-9_\-])"  # a token starts where a run of base64url characters starts
_JWT = rf"{_B64}eyJ[A-Za-z0-9_\-]++\.[A-Za-z0-9_\-]++\.[A-Za-z0-9_\-]*+"
_SHAPES = re.compile(rf"{_JWT}|{_B64}pearl_[A-Za-z0-9_\-]{{16,}}+|(?i:bearer)\s++[A-Za-z0-9_\-.~+/=]{{8,}}+")
_WORD = re.compile(r"\S+")


def _decoded(text: str) -> str:
    """Percent-decoded until stable (a token may be encoded twice on its way to a log)."""
    for _ in range(3):
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    return text


def _secret_name(name: str) -> bool:
    return _decoded(name).lower().lstrip("?&;") in SECRET_PARAMS


def _holds_secret(text: str) -> bool:
    return bool(_SHAPES.search(text)) or any(
        _secret_name(m["name"]) and m["value"] != REDACTED for m in _PARAM.finditer(text)
    )


def redact(text: str) -> str:
    """`text` with every token it holds replaced by `***`."""

    def param(match: re.Match[str]) -> str:
        return f"{match['name']}{match['eq']}{REDACTED}" if _secret_name(match["name"]) else match[0]

    text = _SHAPES.sub(REDACTED, _PARAM.sub(param, text))
    if _holds_secret(_decoded(text)):  # a token percent-encoded inside a longer word (a URL in a URL): drop the word
        text = _WORD.sub(lambda w: REDACTED if _holds_secret(_decoded(w[0])) else w[0], text)
    return text


_installed = threading.Lock()
_previous: Callable[..., logging.LogRecord] | None = None


def _redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    assert _previous is not None
    record = _previous(*args, **kwargs)
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: leave the record to logging's own error report
        return record
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, ()
    if record.exc_info and record.exc_info[1] is not None:
        # The traceback is formatted later; format it now so that its text can be redacted (handlers use exc_text).
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    return record


def install() -> None:
    """Route every log record of this process through `redact` (idempotent)."""
    global _previous
    with _installed:
        if logging.getLogRecordFactory() is _redacting_factory:
            return
        _previous = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_redacting_factory)
