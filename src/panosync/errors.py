"""What a refused value is: a SettingError, a ValueError whose sentence says what to change and
which names the parameter; and how a refusal shows the value it refuses."""

from __future__ import annotations

SHOWN_CHARACTERS = 60  # of a refused value, in its sentence: a megabyte sent as a width is not echoed


class SettingError(ValueError):
    """A value a front end or the pipeline cannot use: `field` names the parameter (None when the
    sentence is about several), the message says what to change."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field


def shown(value) -> str:
    """`value` as a refusal shows it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARACTERS else f"{text[:SHOWN_CHARACTERS - 1]}… ({len(text):,} characters)"
