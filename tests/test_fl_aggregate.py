"""How the server turns a round's accepted changes into one: the running, sample-weighted mean
folded as replies arrive, and the robust rules over spilled changes."""

from __future__ import annotations

import numpy as np
import pytest

from zk0cli.fl import integrity
from zk0cli.fl.aggregate import RunningMean
from zk0cli.fl.integrity import WireChange


def as_change(arrays: dict[str, np.ndarray]) -> WireChange:
    """``arrays`` as an fp32 update's change against a zero global: the change is ``arrays``."""
    zeros = {name: np.zeros_like(value) for name, value in arrays.items()}
    return WireChange(integrity.layout_of(arrays), integrity.FP32, integrity.flat(arrays), zeros)


def updates(count: int, seed: int = 0) -> list[tuple[dict[str, np.ndarray], float]]:
    rng = np.random.default_rng(seed)
    return [
        (
            {"expert.w": rng.normal(size=(64, 32)).astype(np.float32), "proj.b": rng.normal(size=7).astype(np.float32)},
            float(rng.integers(1, 500)),
        )
        for _ in range(count)
    ]


@pytest.mark.parametrize("count", [1, 2, 5, 40])
def test_the_running_mean_is_the_sample_weighted_average(count, monkeypatch):
    monkeypatch.setattr(integrity, "PIECE", 500)  # expert.w in five pieces, one of them short
    given = updates(count)
    folded = RunningMean(integrity.layout_of(given[0][0]))
    for arrays, samples in given:
        folded.add(as_change(arrays), samples)
    result = folded.result()
    for name in given[0][0]:
        expected = np.average(
            np.stack([arrays[name].astype(np.float64) for arrays, _ in given]), axis=0, weights=[w for _, w in given]
        )
        assert result[name].dtype == np.float32
        # a float32 sum: each value within a few float32 steps of the largest weighted term
        np.testing.assert_allclose(result[name], expected, rtol=1e-5, atol=1e-5)
    assert folded.count == count and folded.total_weight == sum(w for _, w in given)


def test_one_update_comes_back_bit_for_bit():
    ((arrays, _),) = updates(1, seed=3)
    folded = RunningMean(integrity.layout_of(arrays))
    folded.add(as_change(arrays), 64.0)  # a power of two: weighting and dividing are exact
    result = folded.result()
    assert all(np.array_equal(result[name], arrays[name]) for name in arrays)


def test_it_keeps_no_update_and_refuses_what_cannot_be_averaged():
    (arrays, samples), (other, _) = updates(2, seed=5)
    folded = RunningMean(integrity.layout_of(arrays))
    change = as_change(arrays)
    folded.add(change, samples)
    change.values[:] = 1e9  # the reply's arrays may be released right after add()
    with pytest.raises(ValueError, match="positive"):
        folded.add(as_change(other), 0.0)
    with pytest.raises(ValueError, match="differ"):
        folded.add(as_change({"expert.w": other["expert.w"]}), 1.0)
    assert np.abs(folded.result()["expert.w"]).max() < 1e3
    for again in (lambda: folded.result(), lambda: folded.add(as_change(other), 1.0)):  # a round's mean is taken once
        with pytest.raises(ValueError, match="taken already"):
            again()
    with pytest.raises(ValueError, match="no update"):
        RunningMean(integrity.layout_of(other)).result()


@pytest.mark.parametrize(("rule", "trim"), [("median", 0.0), ("trimmed-mean", 0.2)])
def test_robust_rules_spill_every_update_and_aggregate_tensor_by_tensor(tmp_path, rule, trim, monkeypatch):
    from zk0cli.fl import aggregate
    from zk0cli.fl.aggregate import SpilledUpdates

    monkeypatch.setattr(aggregate, "PIECE_ELEMENTS", 5 * 1024)  # expert.w's 2048 values in two pieces

    given = updates(5, seed=11)
    spilled = SpilledUpdates(tmp_path / "spill", rule, trim)
    for arrays, samples in given:
        spilled.add(as_change(arrays), samples)
    assert len(list((tmp_path / "spill").iterdir())) == 5  # one file per update, none in memory
    result = spilled.result()
    for name in given[0][0]:
        stacked = np.stack([arrays[name] for arrays, _ in given])
        if rule == "median":
            expected = np.median(stacked, axis=0)
        else:  # cut the lowest and the highest 20% (one of five) per value, average the rest
            expected = np.sort(stacked, axis=0)[1:-1].mean(axis=0)
        np.testing.assert_allclose(result[name], expected, rtol=1e-6, atol=1e-7)
        assert result[name].shape == given[0][0][name].shape and result[name].dtype == np.float32
    assert not (tmp_path / "spill").exists()  # the spill goes with the round


@pytest.mark.parametrize(("rule", "byzantine"), [("krum", 1), ("multi-krum", 1), ("multi-krum", 2)])
def test_krum_rules_match_flowers_own_krum_on_the_spilled_updates(tmp_path, rule, byzantine, monkeypatch):
    """Distances are summed piece by piece from the spill; the choice and the result are what
    Flower's aggregate_krum gives on whole models (it flattens them all into memory)."""
    from flwr.server.strategy.aggregate import aggregate_krum

    from zk0cli.fl import aggregate
    from zk0cli.fl.aggregate import SpilledUpdates

    monkeypatch.setattr(aggregate, "PIECE_ELEMENTS", 7 * 1024)  # expert.w's 2048 values in two pieces

    given = updates(7, seed=5)
    given[2][0]["expert.w"] *= -10  # a poisoned update: far from every other
    spilled = SpilledUpdates(tmp_path / "spill", rule, byzantine_nodes=byzantine)
    for arrays, samples in given:
        spilled.add(as_change(arrays), samples)
    result = spilled.result()
    keep = 0 if rule == "krum" else len(given) - byzantine
    expected = aggregate_krum([(list(a.values()), int(s)) for a, s in given], byzantine, keep)
    for (name, value), want in zip(result.items(), expected, strict=True):
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-6, err_msg=name)
    assert 2 in spilled.excluded and len(spilled.excluded) == (len(given) - 1 if rule == "krum" else byzantine)
    assert not (tmp_path / "spill").exists()


def test_each_spilled_update_gets_its_cosine_to_the_aggregate(tmp_path, monkeypatch):
    from zk0cli.fl import aggregate
    from zk0cli.fl.aggregate import SpilledUpdates

    monkeypatch.setattr(aggregate, "PIECE_ELEMENTS", 4 * 1024)  # pieces of 1024 values

    given = updates(4, seed=9)
    given[1] = ({name: -value for name, value in given[0][0].items()}, 1.0)  # 0's change, negated
    spilled = SpilledUpdates(tmp_path / "spill", "median")
    for arrays, samples in given:
        spilled.add(as_change(arrays), samples)
    step = integrity.flat(spilled.result()).astype(np.float64)
    for (arrays, _), cosine in zip(given, spilled.cosines, strict=True):
        own = integrity.flat(arrays).astype(np.float64)
        assert cosine == pytest.approx(own @ step / np.linalg.norm(own) / np.linalg.norm(step), rel=1e-6)
    assert spilled.cosines[1] == pytest.approx(-spilled.cosines[0], rel=1e-6)


def test_a_spill_the_disk_cannot_hold_fails_at_the_first_update_and_leaves_nothing(tmp_path, monkeypatch):
    """Room for every update the round expects is checked before the first is written: a full
    disk fails the round with what is needed, not part-way through (or with a SIGBUS)."""
    import shutil
    from types import SimpleNamespace

    from zk0cli.core.errors import ExitCode, Zk0Error
    from zk0cli.fl.aggregate import SpilledUpdates

    given = updates(3, seed=12)
    update_bytes = sum(value.nbytes for value in given[0][0].values())
    monkeypatch.setattr(shutil, "disk_usage", lambda _: SimpleNamespace(free=2 * update_bytes))
    spilled = SpilledUpdates(tmp_path / "spill", "median", expected=3)
    with pytest.raises(Zk0Error, match="needed for 3 more") as failed:
        spilled.add(as_change(given[0][0]), given[0][1])
    assert failed.value.code == ExitCode.ENV_NOT_READY and "aggregation=mean" in failed.value.hint
    assert not (tmp_path / "spill").exists()
