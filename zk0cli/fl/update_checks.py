"""What the server measures of each accepted update before it folds it in: the L2 norm of its
change to the global weights, clipped to ``clip-update-norm`` when set, and, once the round's
replies are in, flags for updates or losses far from the others' (scalars only: no update kept),
for changes pointing away from the aggregate's and for updates a Krum rule left out.

A flag is reported (round record, stream, status, report); it does not exclude an update.
"""

from __future__ import annotations

import statistics
from typing import Any

NORM_FLAG_RATIO = 3.0  # an update whose change is this many times the others' median norm is flagged
# A training loss this many spreads above the others' median. The spread is the others' MAD
# (scaled to a standard deviation), but never less than LOSS_SPREAD_FLOOR of their median: two or
# three honest losses can agree to the third decimal, and a spread measured from them would flag
# any node a hair above (it did, and quarantine-after then left honest nodes out).
LOSS_FLAG_SPREADS = 3.0
LOSS_SPREAD_FLOOR = 0.1
# A change pointing away from the aggregate's (robust rules measure it). Not 0: honest changes
# of a few noisy steps are near-orthogonal in ~100M dimensions, and land just below 0 often.
COSINE_FLAG = -0.5


def clip_factor(norm: float, limit: float) -> float:
    """What a change of L2 ``norm`` is scaled by so that its norm is at most ``limit`` (0: off)."""
    if limit <= 0 or norm <= limit:
        return 1.0
    return limit / norm


def _loss_flag(loss: float, others: list[float]) -> str | None:
    if len(others) < 2:
        return None
    median = statistics.median(others)
    mad = statistics.median(abs(other - median) for other in others)
    spread = max(1.4826 * mad, LOSS_SPREAD_FLOOR * abs(median))
    if spread > 0 and loss > median + LOSS_FLAG_SPREADS * spread:
        return f"loss {(loss - median) / spread:.1f} spreads above the others' median"
    return None


def flag_outliers(clients: list[dict[str, Any]]) -> None:
    """Add ``flags`` to each client entry whose update norm or loss is far from the others'."""
    for index, client in enumerate(clients):
        others = clients[:index] + clients[index + 1 :]
        flags = []
        norms = [o["measured_update_norm"] for o in others if o.get("measured_update_norm")]
        own = client.get("measured_update_norm") or 0.0
        if norms and own > NORM_FLAG_RATIO * statistics.median(norms):
            flags.append(f"update norm {own / statistics.median(norms):.1f}x the others' median")
        if (loss_flag := _loss_flag(client["metrics"]["loss"], [o["metrics"]["loss"] for o in others])) is not None:
            flags.append(loss_flag)
        cosine = client.get("cosine_to_aggregate")
        if cosine is not None and cosine < COSINE_FLAG:
            flags.append(f"change points away from the aggregate's (cosine {cosine:.2f})")
        if flags:
            client["outlier"] = True  # what quarantine-after counts; clipping or krum's choice alone is not
        if client.get("excluded_by"):  # krum keeps one update, multi-krum drops f: honest nodes too
            flags.append(f"left out of the aggregate by {client['excluded_by']}")
        if client.get("clipped_by"):
            flags.append(f"change clipped to the norm limit (x{client['clipped_by']:.3g})")
        if flags:
            client["flags"] = flags
