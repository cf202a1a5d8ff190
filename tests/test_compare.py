"""zk0 compare on records written with the record writers: numbers read back, means, intervals, gaps."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
from test_report import write_record

from zk0cli.core.errors import ExitCode
from zk0cli.services import compare


def test_t_quantiles_match_the_textbook():
    assert compare.t_quantile_975(1) == pytest.approx(12.706)
    assert compare.t_quantile_975(2) == pytest.approx(4.303)
    assert compare.t_quantile_975(11) == pytest.approx(2.201, abs=2e-3)  # interpolated between 10 and 12
    assert compare.t_quantile_975(50) == pytest.approx(2.009, abs=2e-3)
    assert compare.t_quantile_975(1e9) == pytest.approx(1.960, abs=1e-3)
    with pytest.raises(ValueError):
        compare.t_quantile_975(0.5)


def test_mean_ci_and_welch_gap_by_hand():
    estimate = compare.mean_ci([1.0, 2.0, 3.0])
    half = 4.303 * 1.0 / math.sqrt(3)
    assert (estimate.mean, estimate.low, estimate.high, estimate.n) == pytest.approx((2.0, 2.0 - half, 2.0 + half, 3))
    assert compare.mean_ci([1.5]).low is None
    federated, centralized = [1.2, 1.3, 1.4], [1.0, 1.02, 0.98]
    percent, low, high = compare.relative_gap(federated, centralized)
    va, vc = statistics.variance(federated) / 3, statistics.variance(centralized) / 3
    df = (va + vc) ** 2 / (va**2 / 2 + vc**2 / 2)
    half = compare.t_quantile_975(df) * math.sqrt(va + vc)
    assert percent == pytest.approx(30.0)
    assert (low, high) == pytest.approx((100 * (0.3 - half), 100 * (0.3 + half)))
    assert compare.relative_gap([2.0], [1.0]) == (100.0, None, None)
    # paired by seed: the interval of the per-seed differences (0.2, 0.28, 0.42), same point estimate
    percent, low, high = compare.relative_gap(federated, centralized, paired=True)
    half = 4.303 * statistics.stdev([0.2, 0.28, 0.42]) / math.sqrt(3)
    assert percent == pytest.approx(30.0) and (low, high) == pytest.approx((100 * (0.3 - half), 100 * (0.3 + half)))


def test_compare_reads_every_number_from_the_records(cli, zk0_home, tmp_path):
    runs = zk0_home / "data" / "runs"
    fed = [write_record(runs, f"fed-{s}", [2.0, 1.6, 1.2 + 0.1 * s], seed=s) for s in (1, 2, 3)]
    cen = [
        write_record(runs, f"cen-{s}", [2.0, 1.3, 1.0 - 0.02 * s], seed=s, mode="centralized", steps_per_client=15)
        for s in (1, 2, 3)
    ]
    result = cli(
        "compare",
        ",".join(p.name for p in fed),
        ",".join(str(p) for p in cen),
        "--out",
        str(tmp_path / "cmp"),
        "--json",
    )
    assert result.code == 0, result.stderr
    data = result.json()
    federated, centralized = data["arms"]
    assert (federated["mode"], centralized["mode"], data["reference"]) == (
        "federated",
        "centralized",
        centralized["label"],
    )
    for arm, dirs in ((federated, fed), (centralized, cen)):
        for run, root in zip(arm["runs"], dirs):
            history = json.loads((root / "policy_loss_history.json").read_text())
            assert run["final_loss"] == history[-1]["policy_loss"]
            assert run["final_action_error"] == history[-1]["action_error"]
            assert run["best_loss"] == min(h["policy_loss"] for h in history)
            assert run["steps"] == 30  # 2 rounds x (3 clients x 5 steps | 1 client x 15 steps)
    finals = [1.3, 1.4, 1.5]
    assert federated["estimates"]["final_loss"]["mean"] == pytest.approx(1.4)
    assert federated["estimates"]["final_loss"]["low"] == pytest.approx(1.4 - 4.303 * 0.1 / math.sqrt(3), abs=1e-9)
    gap = next(g for g in data["gaps"] if g["metric"] == "final_loss")
    percent, low, high = compare.relative_gap(finals, [0.98, 0.96, 0.94], paired=True)  # seeds 1, 2, 3 in both
    assert (gap["percent"], gap["low"], gap["high"], gap["method"]) == pytest.approx(
        (percent, low, high, "paired by seed")
    )
    assert gap["text"].startswith(f"federated {federated['label']} is {percent:.1f}% (CI ")
    assert "above centralized" in gap["text"]
    assert Path(data["plot"]).read_bytes()[:4] == b"\x89PNG"
    assert data["warnings"] == []  # same held-out data, same optimizer steps
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["gaps"] == data["gaps"]
    human = cli("compare", "fed-1", "cen-1", "--out", str(tmp_path / "cmp2"))
    assert human.code == 0 and "A vs B, final loss:" in human.stdout and "(no CI)" in human.stdout
    assert "A  federated    1 seed,   30 steps  fed-1" in human.stdout
    assert "B  centralized  1 seed,   30 steps  cen-1" in human.stdout
    assert "dataset's own action units" in human.stdout  # the error's unit is said
    assert all(len(line) <= 80 for line in human.stdout.splitlines() if not line.startswith("plot: "))
    unpaired = compare.compare([["fed-1", "fed-2"], ["cen-2", "cen-3"]], out_dir=tmp_path / "cmp3")  # seeds differ
    gap = next(g for g in unpaired["gaps"] if g["metric"] == "final_loss")
    percent, low, high = compare.relative_gap([1.3, 1.4], [0.96, 0.94])
    assert (gap["percent"], gap["low"], gap["high"], gap["method"]) == pytest.approx((percent, low, high, "Welch"))


def test_seeds_are_taken_from_disk_before_running_more(zk0_home, tmp_path):
    runs = zk0_home / "data" / "runs"
    write_record(runs, "fed", [2.0, 1.5], seed=7)
    write_record(runs, "fed-seed8", [2.0, 1.4], seed=8)  # a seed run of an earlier compare
    write_record(runs, "cen", [2.0, 1.1], seed=7, mode="centralized")
    failed = runs / "cen-seed8"  # an attempt that died: rerun from scratch, none of its files kept
    failed.mkdir()
    (failed / "round_5_server_eval.json").write_text("{}")
    asked = []

    def rerun(run, seed, name):  # stands in for the simulation/training only to see what is asked
        asked.append((run.run_id, seed, name))
        return write_record(runs, name, [2.0, 1.0 + seed / 100], seed=seed, mode=run.mode)

    data = compare.compare([["fed"], ["cen"]], seeds=3, out_dir=tmp_path / "c", rerun=rerun)
    assert asked == [("fed", 9, "fed-seed9"), ("cen", 8, "cen-seed8"), ("cen", 9, "cen-seed9")]
    assert not (failed / "round_5_server_eval.json").exists()
    assert [run["seed"] for run in data["arms"][0]["runs"]] == [7, 8, 9]
    assert data["arms"][1]["estimates"]["final_loss"]["n"] == 3
    assert data["warnings"] == [
        "the arms trained for different optimizer steps (fed (+2 seeds): 15, cen (+2 seeds): 5); "
        "match them with `zk0 train --match-run`"
    ]


def test_runs_evaluated_on_other_data_are_flagged(zk0_home, tmp_path):
    runs = zk0_home / "data" / "runs"
    write_record(runs, "a", [2.0, 1.5])
    other = write_record(runs, "b", [2.0, 1.4])
    final = other / "round_1_server_eval.json"
    entry = json.loads(final.read_text())
    entry["server_eval"]["datasets"] = {"other-heldout": {"policy_loss": 1.4, "action_error": 14.0, "samples": 8}}
    final.write_text(json.dumps(entry))
    data = compare.compare([["a"], ["b"]], out_dir=tmp_path / "c")
    assert data["warnings"] == [
        "the runs were evaluated on different held-out data (heldout:8 | other-heldout:8): their losses do not compare"
    ]


def test_bad_inputs_are_one_line_with_a_hint(cli, zk0_home):
    write_record(zk0_home / "data" / "runs", "only", [2.0, 1.0])
    for args, message in (
        (["only"], "compare needs at least two runs"),
        (["only", "missing-run"], "no run 'missing-run'"),
        (["only", "only", "--seeds", "0"], "--seeds must be >= 1"),
    ):
        result = cli("compare", *args)
        assert result.code == ExitCode.BAD_INPUT, (args, result.stderr)
        assert message in result.stderr and "hint:" in result.stderr and "Traceback" not in result.stderr
