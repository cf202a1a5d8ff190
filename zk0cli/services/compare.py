"""``zk0 compare``: runs side by side, with means, 95% confidence intervals and relative gaps.

Every number comes from the run records as written (policy_loss_history.json for the server
evaluation, the round records for the optimizer steps): nothing is re-evaluated. An *arm* is one
configuration run with one or more seeds; ``--seeds N`` re-runs an arm's first record with the
next seeds until it has N (``zk0 sim --from-record`` / ``zk0 train --from-record`` with
``seed`` replaced), reusing those already on disk.

Statistics: the mean of each metric over an arm's seeds with a t-distribution 95% interval, and
the gap of every arm to the reference arm (the first centralized one, else the first) as a
percentage of the reference mean, with a 95% interval scaled by that mean: when both arms hold the
same seeds (the matched design: ``zk0 train --match-run`` and ``--seeds`` keep a federated run's
seed), the t-interval of the per-seed differences, so what a seed changes in both arms alike
(starting weights, data order, evaluation noise) cancels; otherwise Welch's interval for a
difference of means.
"""

from __future__ import annotations

import math
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from zk0cli.core.errors import bad_input
from zk0cli.core.files import atomic_write_bytes, atomic_write_json
from zk0cli.core.paths import Paths
from zk0cli.services.report import EvalPoint, RunData, load_run
from zk0cli.services.train import LOCAL_ONLY

METRICS = {  # key: what the table and the gap sentences call it
    "final_loss": "final server eval loss",
    "best_loss": "best server eval loss",
    "final_action_error": "final action error",
    "best_action_error": "best action error",
}

# Two-sided 95% quantiles of Student's t by degrees of freedom (scipy is not a dependency);
# between rows the quantile is interpolated linearly in 1/df, which is accurate to ~1e-3.
_T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    25: 2.060,
    30: 2.042,
    40: 2.021,
    60: 2.000,
    120: 1.980,
    math.inf: 1.960,
}


def t_quantile_975(df: float) -> float:
    """The 97.5% quantile of Student's t with ``df`` (possibly fractional) degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    rows = sorted(_T975)
    for low, high in zip(rows, rows[1:], strict=False):  # neighbours: one fewer pair than rows
        if low <= df <= high:
            if df == low:
                return _T975[low]
            weight = (1 / low - 1 / df) / (1 / low - (0 if high == math.inf else 1 / high))
            return _T975[low] + weight * (_T975[high] - _T975[low])
    return _T975[math.inf]


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float | None  # 95% interval; None with a single seed
    high: float | None
    n: int


def mean_ci(values: list[float]) -> Estimate:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Estimate(mean, None, None, len(values))
    half = t_quantile_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return Estimate(mean, mean - half, mean + half, len(values))


@dataclass(frozen=True)
class Gap:
    arm: str
    reference: str
    metric: str
    percent: float  # 100 * (arm mean - reference mean) / reference mean
    low: float | None  # 95% interval of the difference, in percent of the reference mean
    high: float | None
    method: str  # "paired by seed", "Welch" or "one seed" (no interval)

    def sentence(self, arm_mode: str, reference_mode: str) -> str:
        side = "above" if self.percent >= 0 else "below"
        interval = (
            f" (CI {self.low:+.1f}%..{self.high:+.1f}%, {self.method})"
            if self.low is not None
            else " (one seed: no CI)"
        )
        return (
            f"{arm_mode} {self.arm} is {abs(self.percent):.1f}%{interval} {side} {reference_mode} "
            f"{self.reference} in {METRICS[self.metric]}"
        )


def relative_gap(
    values: list[float], reference: list[float], *, paired: bool = False
) -> tuple[float, float | None, float | None]:
    """(percent, low, high) of mean(values) against mean(reference). ``paired``: values[i] and
    reference[i] come from the same seed, and the interval is that of the per-seed differences;
    otherwise Welch's interval for a difference of means."""
    base = statistics.fmean(reference)
    if base == 0:
        raise bad_input("the reference arm's mean is 0: a relative gap is undefined", hint="compare another metric")
    difference = statistics.fmean(values) - base
    percent = 100 * difference / base
    if len(values) < 2 or len(reference) < 2:
        return percent, None, None
    if paired:
        per_seed = mean_ci([value - ref for value, ref in zip(values, reference, strict=True)])
        if per_seed.low is None or per_seed.high is None:
            return percent, None, None
        low, high = per_seed.low, per_seed.high
    else:
        va, vr = statistics.variance(values) / len(values), statistics.variance(reference) / len(reference)
        df = (va + vr) ** 2 / (va**2 / (len(values) - 1) + vr**2 / (len(reference) - 1)) if va + vr else 1
        half = t_quantile_975(df) * math.sqrt(va + vr)
        low, high = difference - half, difference + half
    return percent, 100 * low / abs(base), 100 * high / abs(base)


def arm_gap(arm: Arm, reference: Arm, metric: str) -> Gap:
    """The gap of ``arm`` to ``reference`` in ``metric``, paired by seed when both hold the same seeds."""
    seeds = [run.seed for run in arm.runs if run.seed is not None]
    reference_seeds = [run.seed for run in reference.runs if run.seed is not None]
    paired = (
        len(seeds) > 1
        and len(seeds) == len(arm.runs)
        and len(set(seeds)) == len(seeds)
        and sorted(seeds) == sorted(reference_seeds)
        and len(reference_seeds) == len(reference.runs)
    )
    if paired:
        values, base = arm.values(metric, by_seed=True), reference.values(metric, by_seed=True)
    else:
        values, base = arm.values(metric), reference.values(metric)
    method = "one seed" if min(len(values), len(base)) < 2 else "paired by seed" if paired else "Welch"
    return Gap(arm.label, reference.label, metric, *relative_gap(values, base, paired=paired), method)


# ----------------------------------------------------------------------------- runs and arms


@dataclass
class RunResult:
    """The numbers compare uses from one record, exactly as the record has them."""

    run_id: str
    root: str
    mode: str
    seed: int | None
    final_round: int
    steps: int  # optimizer steps at the final evaluation
    final_loss: float
    final_action_error: float
    best_loss: float
    best_loss_round: int
    best_action_error: float
    heldout: list[str]  # "dataset:samples" of the final server evaluation: what the numbers are measured on
    curve: list[EvalPoint]

    @classmethod
    def from_run(cls, run: RunData) -> RunResult:
        points = run.eval_points()
        if not points:
            raise bad_input(
                f"run {run.run_id} has no server evaluation yet",
                hint=f"wait for its first round or see {run.root / 'status.json'}",
            )
        final, best = points[-1], min(points, key=lambda p: p.policy_loss)
        evaluated = next(e for e in run.rounds if e["round"] == final.round)["server_eval"]["datasets"]
        heldout = sorted(f"{name}:{m.get('samples')}" for name, m in evaluated.items())
        return cls(
            run.run_id,
            str(run.root),
            run.mode,
            run.seed,
            final.round,
            final.steps,
            final.policy_loss,
            final.action_error,
            best.policy_loss,
            best.round,
            min(p.action_error for p in points),
            heldout,
            points,
        )


@dataclass
class Arm:
    label: str
    runs: list[RunResult]

    @property
    def mode(self) -> str:
        modes = sorted({run.mode for run in self.runs})
        return modes[0] if len(modes) == 1 else "+".join(modes)

    def values(self, metric: str, *, by_seed: bool = False) -> list[float]:
        runs = sorted(self.runs, key=lambda run: -1 if run.seed is None else run.seed) if by_seed else self.runs
        return [getattr(run, metric) for run in runs]

    def estimates(self) -> dict[str, Estimate]:
        return {metric: mean_ci(self.values(metric)) for metric in METRICS}


# A callable that re-runs a record with another seed into runs_dir/run_name and returns its directory.
Rerun = Callable[[RunData, int, str], Path]


def compare(
    arm_refs: list[list[str]],
    *,
    seeds: int = 1,
    out_dir: Path | None = None,
    rerun: Rerun | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Load the arms (each a list of run ids/dirs), run missing seeds, and compare them."""
    if len(arm_refs) < 2:
        raise bad_input("compare needs at least two runs", hint="zk0 compare RUN_A RUN_B (a,b,c for one arm of seeds)")
    if seeds < 1:
        raise bad_input(f"--seeds must be >= 1, got {seeds}", hint="pass --seeds 3 for three seeds per arm")
    arms = []
    for refs in arm_refs:
        runs = [load_run(ref) for ref in refs]
        runs += _more_seeds(runs, seeds, rerun or rerun_record, progress)
        arms.append(Arm(_label(runs), [RunResult.from_run(run) for run in runs]))
    reference = next((arm for arm in arms if arm.mode == "centralized"), arms[0])
    gaps = [arm_gap(arm, reference, metric) for arm in arms if arm is not reference for metric in METRICS]
    federated = next((arm for arm in arms if arm.mode == "federated"), None)
    if federated is not None:  # what a node operator asks: the federated model against mine alone
        gaps += [
            arm_gap(federated, local, metric)
            for local in arms
            if local.mode == LOCAL_ONLY and local is not reference
            for metric in METRICS
        ]
    out_dir = (
        Path(out_dir) if out_dir is not None else Paths.resolve().data_dir / "compare" / time.strftime("%Y%m%d-%H%M%S")
    )
    plot = write_curves(out_dir / "loss_vs_steps.png", arms)
    modes = {arm.label: arm.mode for arm in arms}
    result = {
        "arms": [
            {
                "label": arm.label,
                "mode": arm.mode,
                "runs": [{k: v for k, v in asdict(run).items() if k != "curve"} for run in arm.runs],
                "estimates": {metric: asdict(estimate) for metric, estimate in arm.estimates().items()},
            }
            for arm in arms
        ],
        "reference": reference.label,
        "gaps": [{**asdict(gap), "text": gap.sentence(modes[gap.arm], modes[gap.reference])} for gap in gaps],
        "curves": {run.run_id: [asdict(point) for point in run.curve] for arm in arms for run in arm.runs},
        "plot": str(plot),
        "warnings": comparability_warnings(arms),
    }
    atomic_write_json(out_dir / "compare.json", result)
    return result


def comparability_warnings(arms: list[Arm]) -> list[str]:
    """What makes the numbers of these runs not comparable: other held-out data, other step counts."""
    warnings = []
    heldout = {", ".join(run.heldout) for arm in arms for run in arm.runs}
    if len(heldout) > 1:
        warnings.append(
            f"the runs were evaluated on different held-out data ({' | '.join(sorted(heldout))}): "
            "their losses do not compare"
        )
    # a local-only arm trains only its node's share of the steps, by design
    steps = {arm.label: sorted({run.steps for run in arm.runs}) for arm in arms if arm.mode != LOCAL_ONLY}
    if len({tuple(s) for s in steps.values()}) > 1:
        warnings.append(
            "the arms trained for different optimizer steps ("
            + ", ".join(f"{label}: {'/'.join(map(str, s))}" for label, s in steps.items())
            + "); match them with `zk0 train --match-run`"
        )
    return warnings


def _label(runs: list[RunData]) -> str:
    return runs[0].run_id if len(runs) == 1 else f"{runs[0].run_id} (+{len(runs) - 1} seeds)"


def _more_seeds(
    runs: list[RunData], wanted: int, rerun: Rerun, progress: Callable[[str], None] | None
) -> list[RunData]:
    """Runs of the first record with the next unused seeds, until the arm has ``wanted``."""
    base = runs[0]
    used = {run.seed for run in runs}
    seed = int(base.seed or 0)
    extra: list[RunData] = []
    while len(runs) + len(extra) < wanted:
        seed += 1
        if seed in used:
            continue
        name = f"{base.run_id}-seed{seed}"
        existing = base.root.parent / name
        if _completed(existing):
            extra.append(load_run(existing))
            continue
        if progress:
            progress(f"running {base.mode} {base.run_id} with seed {seed} -> {name}")
        shutil.rmtree(existing, ignore_errors=True)  # an earlier attempt that did not complete
        extra.append(load_run(rerun(base, seed, name)))
    return extra


def _completed(root: Path) -> bool:
    import json

    try:
        return json.loads((root / "status.json").read_text())["state"] == "completed"
    except (OSError, ValueError, KeyError, TypeError):
        return False


def rerun_record(run: RunData, seed: int, run_name: str) -> Path:
    """Re-run a record with ``seed`` into the same runs directory under ``run_name``."""
    if run.mode != "federated":  # centralized and local-only records are zk0 train's
        from zk0cli.services.train import train_from_record

        return train_from_record(run.root, seed=seed, run_name=run_name, runs_dir=run.root.parent).root
    from zk0cli.services import simulation
    from zk0cli.services.report import sim_request_from_record

    request = sim_request_from_record(
        run.root, overrides={"seed": seed, "run-name": run_name}, runs_dir=run.root.parent
    )
    return simulation.run(request, Paths.resolve()).run_dir


def write_curves(path: Path, arms: list[Arm]) -> Path:
    """Server eval loss against optimizer steps, every run of every arm on one plot."""
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.add_subplot()
    colours = ("black", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    for index, arm in enumerate(arms):
        for position, run in enumerate(arm.runs):
            ax.plot(
                [p.steps for p in run.curve],
                [p.policy_loss for p in run.curve],
                marker="o",
                color=colours[index % len(colours)],
                alpha=1.0 if position == 0 else 0.45,
                label=f"{arm.mode}: {arm.label}" if position == 0 else None,
            )
    ax.set_xlabel("optimizer steps (all clients together)")
    ax.set_ylabel("server eval loss (held-out)")
    ax.set_title("Server evaluation loss against optimizer steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return path
