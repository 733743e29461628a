"""How long a server keeps finished jobs: `--keep 7d`, `--keep 2GB` or both, `--keep 7d,2GB`; and
the sizes the server's other options take (`--min-free 64MB`).

Age is counted from when a job finished; the byte budget covers what retention can free, the
outputs of finished jobs and the condition images only they use, and is met by deleting the oldest
finished jobs first (jobs.JobStore.apply_retention).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# The free space a server keeps on its state folder's disk unless told otherwise (--min-free).
DEFAULT_MIN_FREE_BYTES = 64 * 2**20
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Decimal units as disks are sold, binary ones for those who count in them; a plain "B" is bytes.
BYTES = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
AMOUNT = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]+)\s*", re.IGNORECASE)
MIN_FREE_FORMS = ("--min-free takes a size (64MB, 1GB, 512MiB), a number with its unit, or 0 for no reserve")
FORMS = ("--keep takes an age (30m, 12h, 7d, 2w), a size (500MB, 2GB, 1.5GiB) or one of each separated by "
         "a comma (7d,2GB), each a positive number with its unit")


@dataclass(frozen=True)
class Retention:
    """Finished jobs older than `max_age_seconds` are deleted, then the oldest finished jobs until
    their outputs and the conditions only they use take at most `max_bytes`; None: no limit of that
    kind."""

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
        raise _refuse(FORMS, text)
    for part in parts:
        number, unit = _amount(part, FORMS, text)
        if number <= 0:
            raise _refuse(FORMS, text)
        if unit in SECONDS and age is None:
            age = number * SECONDS[unit]
        elif unit in BYTES and size is None:
            size = _bytes(number, unit)
        else:  # an unknown unit, or two ages or two sizes
            raise _refuse(FORMS, text)
    return Retention(max_age_seconds=age, max_bytes=size)


def parse_min_free(text: str) -> int:
    """The bytes a `--min-free` value asks the server to keep free (0: no reserve); a ValueError
    naming the accepted forms otherwise. Sizes are read as `--keep` reads them."""
    if str(text).strip() == "0":
        return 0
    number, unit = _amount(text, MIN_FREE_FORMS, text)
    if number < 0 or unit not in BYTES:
        raise _refuse(MIN_FREE_FORMS, text)
    return 0 if number == 0 else _bytes(number, unit)


def _amount(part: str, forms: str, text: str) -> tuple[float, str]:
    """The finite number and the lower-case unit of `part` (one amount of `text`)."""
    match = AMOUNT.fullmatch(str(part))
    if match is None:
        raise _refuse(forms, text)
    number = float(match.group(1))
    if not math.isfinite(number):
        raise _refuse(forms, text)
    return number, match.group(2).lower()


def _bytes(number: float, unit: str) -> int:
    return max(1, round(number * BYTES[unit]))


def _refuse(forms: str, text: str) -> ValueError:
    return ValueError(f"{forms}; got {text!r}.")


def format_size(count: float) -> str:
    """A byte count as people read it: 512 bytes, 3.2 MiB, 1.5 GiB."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
