"""The one rule for reading a label, in training and scoring alike.

A label is a class name or a whole number: an int, a whole float or decimal, or a string of digits
with an optional sign (bytes are read as UTF-8 text), within int64. A string is a name before it is a number,
and any other value that is not a whole number (True, a date) is read as its text. A whole number is
a class index when it is one (0 .. K-1); anything else (a fraction, NaN, a negative number, an index
past the classes, a name not among them) names no class. Training makes the classes
(:func:`label_classes`); scoring takes the model's (:func:`class_indices`), and a plain model carries
a whole number through as it is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal

import numpy as np

from training.data.images import DataError

_WHOLE = re.compile(r"[+-]?[0-9]+")
_INT64 = 2**63
#: whole-number labels are class indices 0 .. K-1: more classes than this is a mistake, not a data set
MAX_CLASSES = 100_000


def label_text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def whole_number(value: object) -> int | None:
    """A label as a whole number, if it is one."""
    if value is None or isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | np.integer):
        number = int(value)
    elif isinstance(value, float | np.floating | Decimal):
        if not (value.is_finite() if isinstance(value, Decimal) else np.isfinite(value)) or value != int(value):
            return None
        number = int(value)
    else:
        text = label_text(value).strip()
        digits = text.lstrip("+-").lstrip("0") or "0"
        if not _WHOLE.fullmatch(text) or len(digits) > 19:  # more digits: past int64 anyway
            return None
        number = -int(digits) if text.startswith("-") else int(digits)
    return number if -_INT64 <= number < _INT64 else None


def class_indices(raw: Sequence[object], classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(class index per label, known mask) of ``raw`` against a fixed class list: a string that names
    one of ``classes``, else a whole number (``classes`` empty: any whole number, carried through)."""
    index = {name: i for i, name in enumerate(classes)}
    values = np.zeros(len(raw), np.int64)
    known = np.zeros(len(raw), bool)
    for i, v in enumerate(raw):
        if v is None:
            continue
        n = whole_number(v)
        if (n is None or isinstance(v, str | bytes)) and label_text(v) in index:
            values[i], known[i] = index[label_text(v)], True
        elif n is not None and (not classes or 0 <= n < len(classes)):
            values[i], known[i] = n, True
    return values, known


def label_classes(raw: list, classes: list[str] | None = None) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(class index per label, class names, known mask) of a training set's labels: names make the
    classes (sorted); whole numbers are their own class indices (names ``"0"`` .. ``"K-1"``); both
    kinds at once are a :class:`DataError` (a number cannot say which name it means). ``classes``: a
    fixed class list (a built-in or in-memory data set's own order), used as the names, which whole
    numbers index."""
    numbers = [whole_number(v) for v in raw]
    named = sorted(
        {label_text(v) for v, n in zip(raw, numbers, strict=True) if n is None and v is not None and not _number(v)}
    )
    if named and not classes and any(n is not None and n >= 0 for n in numbers):
        raise DataError(_mixed_labels(raw, numbers, named))
    if classes:  # a data set with its own class order (Fashion-MNIST's): names and indices into it
        named = list(classes)
    if named:
        values, known = class_indices(raw, named)
        return values, named, known
    known = np.array([n is not None and n >= 0 for n in numbers], bool)
    values = np.array([n if k else 0 for n, k in zip(numbers, known, strict=True)], np.int64)
    count = int(values[known].max()) + 1 if known.any() else 0
    if count > MAX_CLASSES:
        raise DataError(
            f"label {count - 1}: whole-number labels are class indices 0 .. K-1, and {count:,} classes is more than "
            f"{MAX_CLASSES:,}; give class names, or number the classes from 0"
        )
    return values, [str(i) for i in range(count)], known


def _number(value: object) -> bool:
    """Whether a label that is not a whole number is still a number (a fraction, NaN): no name."""
    try:
        float(label_text(value))
    except ValueError:
        return False
    return True


def _mixed_labels(raw: list, numbers: list, named: list[str]) -> str:
    whole = [v for v, n in zip(raw, numbers, strict=True) if n is not None and n >= 0]
    shown = ", ".join(repr(v) for v in list(dict.fromkeys(whole))[:5])
    names = ", ".join(repr(v) for v in named[:5]) + (", ..." if len(named) > 5 else "")
    return (
        f"the labels mix two kinds: {len(named)} class name(s) ({names}) and {len(whole):,} whole number(s) "
        f"({shown}{', ...' if len(set(map(str, whole))) > 5 else ''}); a number cannot say which name it means: "
        "give every row a class name, or every row a class number"
    )
