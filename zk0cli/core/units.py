"""How zk0 writes a duration or a size for people: one formatter each, used by every command."""

from __future__ import annotations


def duration(seconds: float | None) -> str:
    """``42s``, ``1m58s``, ``3h07m``, ``2d05h``; "-" when unknown."""
    if seconds is None:
        return "-"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, whole = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{whole:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def size(n_bytes: float | None) -> str:
    """``512 B``, ``1.5 KiB``, ``190.5 MiB``, ``2.1 GiB`` (binary units); "-" when unknown."""
    if n_bytes is None:
        return "-"
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


# The action error is the mean |predicted - recorded action| over an action's dimensions, in the
# dataset's own units (a joint's degrees, a gripper's range): no unit zk0 could convert to.
ACTION_UNIT = "action units"
ACTION_ERROR_MEANING = f"mean |action - recorded action| in the dataset's own {ACTION_UNIT}"


def action_error(value: float | None) -> str:
    """``21.42 action units``; "-" when unknown."""
    return "-" if value is None else f"{value:.4g} {ACTION_UNIT}"
