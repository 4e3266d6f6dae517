"""Whether the backend takes a text as a rate limit (standard library only; used on the control node).

The backend reads its rates with the `limits` library (parse_many, then every limit must allow a request): one or
more `<count> / [<n>] <unit>` or `<count> per [<n>] <unit>`, joined by ',', ';' or '|', units second, minute, hour,
day, month or year (or their plurals), any case, e.g. `60/minute`, `10/second;500/hour`, `100 per 5 minutes`. The
control node need not have `limits` installed, so its grammar is repeated here
(tests/unit/plugins/module_utils/test_rate_limits.py compares the two on a corpus). Stricter in one way only: the
value goes into an env file, so one line of printable characters, at most 256.
"""
from __future__ import annotations

import re

# limits.util's SINGLE_EXPR, SEPARATORS and EXPR (5.x), as it writes them (its `(:?` too).
_SINGLE = r"\s*([0-9]+)\s*(/|\s*per\s*)\s*([0-9]+)?\s*([a-z]+)\s*"
_SEPARATORS = re.compile(r"[,;|]{1}")
_SINGLE_EXPR = re.compile(_SINGLE, re.IGNORECASE)
_EXPR = re.compile(rf"^{_SINGLE}(:?[,;|]{{1}}{_SINGLE})*$", re.IGNORECASE)
_UNITS = frozenset(("second", "minute", "hour", "day", "month", "year"))
_UNIT_NAMES = _UNITS | {f"{unit}s" for unit in _UNITS}
_ONE_LINE = re.compile(r"[ -~]{1,256}\Z")


def is_rate_limit(value: object) -> bool:
    if not isinstance(value, str) or not _ONE_LINE.match(value) or not _EXPR.match(value):
        return False
    for part in _SEPARATORS.split(value):
        match = _SINGLE_EXPR.match(part)
        if match is None:
            continue
        amount, _, _, unit = match.groups()
        if unit.lower() not in _UNIT_NAMES or int(amount) < 1:
            return False
    return True
