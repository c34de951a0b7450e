"""Type and range checks of scalar layer arguments: each error names the owner and the
argument, and a wrong type raises TypeError (``SoftPool2d(2, beta="1")``), a wrong value
ValueError, at construction rather than at the first forward."""
from __future__ import annotations

import math
import numbers


def check_bool(owner: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be a bool, got {value!r}")
    return value


def check_real(owner: str, name: str, value, low: float = -math.inf, high: float = math.inf) -> float:
    """A finite real number in [low, high] (bools and strings are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{owner}: {name} must be finite and in [{low}, {high}], got {value}")
    return value


def check_seed(owner: str, name: str, value):
    """None (a fresh seed per training forward) or an int."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise TypeError(f"{owner}: {name} must be None or an int, got {value!r}")
    return None if value is None else int(value)


def check_dim(owner: str, name: str, value):
    """None (all axes), an int, or a sequence of ints; ranges are checked against the input."""
    ok = value is None or (isinstance(value, numbers.Integral) and not isinstance(value, bool)) or (
        isinstance(value, (tuple, list)) and all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                                 for v in value))
    if not ok:
        raise TypeError(f"{owner}: {name} must be None, an int or a sequence of ints, got {value!r}")
    return value


def normalize_dims(name: str, ndim: int, dim) -> list[int]:
    """``dim`` (None: every axis; an int; a sequence) as non-negative axes of an ``ndim``-D
    input, in the given order; ValueError naming ``name`` for an axis out of range or twice."""
    if dim is None:
        return list(range(ndim))
    dims = [dim] if isinstance(dim, int) else list(dim)
    norm = []
    for d in dims:
        if not -ndim <= d < ndim:
            raise ValueError(f"{name}: dim {d} is out of range for a {ndim}-D input")
        norm.append(d % ndim)
    if len(set(norm)) != len(norm):
        raise ValueError(f"{name}: dim contains duplicates: {dims}")
    return norm
