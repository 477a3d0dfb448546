"""Summary statistics of repeated measurements."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the ``fraction`` quantile (0 to 1) of ``values``, interpolated linearly.

    This is the default method of numpy.percentile. Raises ValueError on an
    empty sequence.
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(values: Sequence[float]) -> dict[str, Any]:
    """Return the count, median, 95th percentile, minimum and maximum of ``values``."""
    return {
        "n": len(values),
        "median": percentile(values, 0.5),
        "p95": percentile(values, 0.95),
        "min": min(values),
        "max": max(values),
    }
