"""Masking personal data (phone numbers, e-mail addresses) in log lines: `log.mask_personal_data`.

Logs are kept and shipped around longer than the messages themselves; an operator who must not
keep who-wrote-to-whom turns this on. Queue ids, domains and reply codes stay readable, so a log
line still says what happened to which message.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

# A local part, kept to its first character; the domain is kept (it says which route).
_EMAIL = re.compile(r"(?<![\w.+-])([\w.+=-])[\w.+=-]*@(?=[A-Za-z0-9-]+\.[A-Za-z0-9.-]+)")
# 10 to 15 digits standing alone (with an optional +): a phone number; its last 2 digits stay.
_PHONE = re.compile(r"(?<![\w+])\+?\d{8,13}(\d{2})(?!\w)")


def mask_personal(text: str) -> str:
    text = _EMAIL.sub(lambda m: f"{m.group(1)}***@", text)
    return _PHONE.sub(lambda m: f"***{m.group(1)}", text)


class PersonalDataFilter(logging.Filter):
    """Rewrites each record's message while `enabled()` says so (it follows config reloads)."""

    def __init__(self, enabled: Callable[[], bool]) -> None:
        super().__init__()
        self.enabled = enabled

    def filter(self, record: logging.LogRecord) -> bool:
        if self.enabled():
            record.msg = mask_personal(record.getMessage())
            record.args = None
        return True


def install(enabled: Callable[[], bool]) -> None:
    """Put the filter on every handler of the root logger (filters on loggers miss children)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(PersonalDataFilter(enabled))
