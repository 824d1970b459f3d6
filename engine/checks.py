"""The checks every request field goes through, once, when a request object is made: a number
from a client (the page's float, a script's int or a stray string) becomes the type the engine
uses or a SettingsError that names the field, the range and what came."""
from __future__ import annotations

import copy
import math
import random

from engine.errors import SettingsError

SEED_LIMIT = 2**63  # seeds are whole numbers from 0 to SEED_LIMIT - 1 (torch's generators take them)
QUOTED = 60  # characters of a refused value an error quotes (a 1,000-character key came back whole)


def said(value) -> str:
    """A refused value as an error quotes it: its repr, cut to QUOTED characters."""
    text = repr(value)
    return text if len(text) <= QUOTED else text[:QUOTED - 3] + "..."


def whole(value, label: str, lo: int, hi: int) -> int:
    """A whole number in [lo, hi]; 4.0 (a float from a page's number box) is taken as 4."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise SettingsError(f"{label} must be a whole number from {lo:,} to {hi:,}, got {said(value)}")
    if not lo <= value <= hi:
        raise SettingsError(f"{label} must be a whole number from {lo:,} to {hi:,}, got {value:g}")
    return int(value)


def real(value, label: str, lo: float, hi: float, above: bool = False) -> float:
    """A number in [lo, hi] (in (lo, hi] when `above`), NaN refused."""
    span = f"more than {lo:g} and at most {hi:g}" if above else f"from {lo:g} to {hi:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise SettingsError(f"{label} must be a number {span}, got {said(value)}")
    if not (lo < value <= hi if above else lo <= value <= hi):
        raise SettingsError(f"{label} must be a number {span}, got {value:g}")
    return float(value)


def check_seed(value) -> int | None:
    """None (draw one, see draw_seed) or a whole number from 0 to 2**63-1."""
    return None if value is None else whole(value, "seed", 0, SEED_LIMIT - 1)


def draw_seed() -> int:
    """The one place a random seed is drawn: the request that gets it reports it with its result."""
    return random.randrange(2**31)


def page_number(value):
    """A page's text box holding a number: "" or spaces -> None (empty: the default), "12" -> 12,
    "1.5" -> 1.5; anything else goes on as it came, for the field's own check to refuse by name."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def page_seed(value):
    """An empty seed box (None) means a random seed; scripts may also send -1, the HTTP API's old
    spelling of it. Any other number goes on to the request's own check, so -5 is refused there
    with the range, never taken silently as 'random'."""
    if value is None or value == "" or (isinstance(value, (int, float)) and not isinstance(value, bool) and value == -1):
        return None
    return value


def with_checked(obj, **values):
    """A copy of a checked, frozen request with fields whose new values are known to be valid
    (a drawn seed, the server's own time bound): nothing is checked twice."""
    new = copy.copy(obj)
    for name, value in values.items():
        object.__setattr__(new, name, value)
    return new
