"""The one learning-rate schedule of every trainer: linear warm-up, then cosine decay to zero."""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_cosine(steps: int, warmup_fraction: float = 0.1) -> Callable[[int], float]:
    """A `LambdaLR` factor for optimizer step `step` (0-based) of a run of `steps` steps: rises
    linearly over the first `warmup_fraction` of the run (at least one step), then follows half a
    cosine from 1 down to 0 at the last step."""
    warmup = max(1, int(steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))

    return factor
