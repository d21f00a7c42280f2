"""The root search of the structured plans (``GroupPlan.fit``, ``LayerPlan.fit``): over
candidates ordered so that the removed weights grow, the last one whose removal stays
within a budget."""

from __future__ import annotations

from collections.abc import Callable


def last_within(count: int, removal: Callable[[int], int], target: int) -> int:
    """The largest index i < ``count`` with ``removal(i) <= target`` (0 when none), for a
    ``removal`` that never decreases with i: bisection's answer, found by interpolating
    between the last index known to fit and the first known not to. A step that fails to
    halve the interval is followed by a bisection step, so the evaluations stay within about
    twice bisection's (5-7 instead of 10-12 on torchvision's ResNet18, MobileNetV3 and
    EfficientNet-B0); ``removal(0)`` is never asked."""
    lo, hi = 0, count - 1
    fits = over = None  # the removal at lo (known to fit) and at hi + 1 (known not to)
    interpolate = True
    while lo < hi:
        width = hi - lo
        if interpolate and fits is not None and over is not None:
            mid = min(hi, lo + 1 + int((target - fits) / (over - fits) * width))
        else:
            mid = (lo + hi + 1) // 2
        removed = removal(mid)
        if removed <= target:
            lo, fits = mid, removed
        else:
            hi, over = mid - 1, removed
        interpolate = hi - lo <= width // 2
    return lo
