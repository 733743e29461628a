"""How long a server keeps finished jobs: `--keep 7d`, `--keep 2GB` or both, `--keep 7d,2GB`.

Age is counted from when a job finished; the byte budget covers the outputs and the condition
images together, and is met by deleting the oldest finished jobs first (jobs.JobStore.apply_retention).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Decimal units as disks are sold, binary ones for those who count in them; a plain "B" is bytes.
BYTES = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
AMOUNT = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]+)\s*", re.IGNORECASE)
FORMS = ("--keep takes an age (30m, 12h, 7d, 2w), a size (500MB, 2GB, 1.5GiB) or one of each separated by "
         "a comma (7d,2GB), each a positive number with its unit")


@dataclass(frozen=True)
class Retention:
    """Finished jobs older than `max_age_seconds` are deleted, then the oldest finished jobs until
    the outputs and conditions take at most `max_bytes`; None: no limit of that kind."""

    max_age_seconds: float | None = None
    max_bytes: int | None = None

    def __post_init__(self):
        for name in ("max_age_seconds", "max_bytes"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"Retention's {name} must be a positive finite number or None, got {value!r}.")


def parse_keep(text: str) -> Retention:
    """The retention a `--keep` value asks for; a ValueError naming the accepted forms otherwise."""
    age = size = None
    parts = str(text).split(",")
    if len(parts) > 2:
        raise _refuse(text)
    for part in parts:
        match = AMOUNT.fullmatch(part)
        if match is None:
            raise _refuse(text)
        number, unit = float(match.group(1)), match.group(2).lower()
        if not (math.isfinite(number) and number > 0):
            raise _refuse(text)
        if unit in SECONDS and age is None:
            age = number * SECONDS[unit]
        elif unit in BYTES and size is None:
            size = max(1, round(number * BYTES[unit]))
        else:  # an unknown unit, or two ages or two sizes
            raise _refuse(text)
    return Retention(max_age_seconds=age, max_bytes=size)


def _refuse(text: str) -> ValueError:
    return ValueError(f"{FORMS}; got {text!r}.")
