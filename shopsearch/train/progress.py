"""How a training loop reports its pace: the rate and the time left, so a long run is never silent
about when it will end."""

from __future__ import annotations

import time


def pace(done: int, total: int, started: float) -> str:
    """'0.62 steps/s, 8.1 min left' after `done` of `total` steps (of this process) since `started`."""
    rate = done / max(time.time() - started, 1e-9)
    return f"{rate:.2f} steps/s, {(total - done) / rate / 60:.1f} min left"
