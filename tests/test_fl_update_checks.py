"""What the server measures of each update: the norm of its change, clipping, outlier flags."""

from __future__ import annotations

import numpy as np
import pytest

from zk0cli.fl.update_checks import change_norm, clip_change, flag_outliers


def weights(seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "a": (rng.normal(size=(8, 4)) * scale).astype(np.float32),
        "b": (rng.normal(size=5) * scale).astype(np.float32),
    }


def test_the_change_norm_is_the_l2_norm_over_every_tensor():
    start, moved = weights(0), weights(1)
    expected = np.sqrt(sum(np.sum((moved[k].astype(np.float64) - start[k]) ** 2) for k in start))
    assert change_norm(moved, start) == pytest.approx(expected, rel=1e-12)
    assert change_norm(start, start) == 0.0


def test_clipping_scales_the_change_to_the_limit_and_keeps_its_direction():
    start, moved = weights(0), weights(1)
    norm = change_norm(moved, start)
    original = {k: v.copy() for k, v in moved.items()}
    factor = clip_change(moved, start, norm, norm / 4)
    assert factor == pytest.approx(0.25)
    assert change_norm(moved, start) == pytest.approx(norm / 4, rel=1e-5)
    for name in start:
        np.testing.assert_allclose(
            moved[name] - start[name], (original[name] - start[name]) * 0.25, rtol=1e-5, atol=1e-6
        )
    assert clip_change(moved, start, norm / 4, norm) == 1.0  # within the limit: untouched
    assert clip_change(moved, start, norm, 0.0) == 1.0  # 0: clipping off


def client(node: str, norm: float, loss: float, **extra) -> dict:
    return {"node": node, "measured_update_norm": norm, "metrics": {"loss": loss}, **extra}


def test_an_update_or_a_loss_far_from_the_others_is_flagged_and_the_rest_not():
    clients = [client("1", 1.0, 2.0), client("2", 1.2, 2.1), client("3", 0.9, 1.9), client("4", 5.0, 2.05)]
    flag_outliers(clients)
    assert [c.get("flags") for c in clients[:3]] == [None, None, None]
    assert clients[3]["flags"] == ["update norm 5.0x the others' median"]
    lossy = [client("1", 1.0, 2.0), client("2", 1.0, 2.1), client("3", 1.0, 1.9), client("4", 1.0, 9.0)]
    flag_outliers(lossy)
    assert "spreads above the others' median" in lossy[3]["flags"][0] and "flags" not in lossy[0]
    clipped = [client("1", 1.0, 2.0, clipped_by=0.5), client("2", 1.0, 2.0)]
    flag_outliers(clipped)
    assert clipped[0]["flags"] == ["change clipped to the norm limit (x0.5)"] and "flags" not in clipped[1]


def test_three_honest_losses_a_hundredth_apart_are_not_flagged():
    """Seen on the loopback grid (issue 14's release test): nodes 1000 and 1002 train on one task,
    1001 on another; round 3 flagged honest 1002 "loss 8.2 std above the others' mean", and
    quarantine-after 1 quarantined it. Two values give no spread to judge a third by."""
    honest = [client("1000", 1.0, 2.300), client("1001", 1.0, 2.301), client("1002", 1.0, 2.310)]
    flag_outliers(honest)
    assert not any(c.get("flags") for c in honest)
    garbage = [client("1000", 1.0, 2.300), client("1001", 1.0, 2.301), client("1002", 1.0, 4.6)]
    flag_outliers(garbage)
    assert [bool(c.get("flags")) for c in garbage] == [False, False, True]  # twice the others' loss still is
