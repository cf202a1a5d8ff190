"""What the server measures of each update: the norm of its change, clipping, outlier flags."""

from __future__ import annotations

import pytest

from zk0cli.fl.update_checks import clip_factor, flag_outliers


def test_clipping_scales_a_change_down_to_the_limit_and_never_up():
    assert clip_factor(8.0, 2.0) == pytest.approx(0.25)
    assert clip_factor(2.0, 8.0) == 1.0  # within the limit: untouched
    assert clip_factor(2.0, 2.0) == 1.0
    assert clip_factor(8.0, 0.0) == 1.0  # 0: clipping off


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
