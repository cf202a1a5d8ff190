"""Dataset checks of time and values: frame_index and timestamps against fps, NaN/Inf, joints that
never move, values far outside the stats, and stats.json against the data."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from zk0cli.core.checks import CheckResult, fail, ok, skip, warn
from zk0cli.datasets.check_context import Context
from zk0cli.datasets.layout import Frames, short_ranges
from zk0cli.datasets.spec import FederationSpec

OUTLIER_SPANS = 3.0  # "far outside": beyond q01/q99 by this many q01..q99 spans


# --- time -------------------------------------------------------------------------------------


def check_frame_index(ctx: Context) -> CheckResult:
    frames = ctx.frames
    if frames is None or "frame_index" in frames.missing_columns:
        return skip("frame index", "no frame_index column")
    expected = np.arange(frames.rows) - np.repeat(frames.starts, frames.lengths)
    wrong = frames.frame != expected
    if wrong.any():
        episodes = frames.rows_to_episodes(wrong)
        return fail(
            "frame index",
            f"frame_index does not run 0, 1, 2... in episode(s) {short_ranges(episodes)}",
            ctx.drop_episodes_fix(episodes),
            episodes=episodes,
        )
    return ok("frame index", f"contiguous from 0 in all {len(frames.starts)} episodes")


def check_timestamps(ctx: Context) -> CheckResult:
    frames = ctx.frames
    if frames is None or "timestamp" in frames.missing_columns or not ctx.fps:
        return skip("timestamps", "no timestamp column or no fps")
    error = np.abs(frames.timestamp - frames.frame / ctx.fps)
    worst_per_episode = frames.per_episode(np.maximum, error)
    worst_overall = float(worst_per_episode.max()) if len(worst_per_episode) else 0.0
    order = np.argsort(-worst_per_episode, kind="stable")[:3]
    worst = [{"episode": int(frames.episode_ids[i]), "max_error_s": float(worst_per_episode[i])} for i in order]
    timing = {
        "tolerance_s": ctx.tolerance_s,
        "max_error_s": worst_overall,
        "smallest_passing_tolerance_s": _round_up(worst_overall),
        "worst_episodes": worst,
    }
    failing = frames.episode_ids[worst_per_episode > ctx.tolerance_s]
    if len(failing):
        episodes = [int(e) for e in failing]
        named = ", ".join(f"{w['episode']} ({w['max_error_s']:.3g} s)" for w in worst)
        return fail(
            "timestamps",
            f"timestamp != frame_index/fps beyond {ctx.tolerance_s:g} s in "
            f"{len(episodes)} episode(s), worst {named}; passes at --tolerance-s "
            f"{timing['smallest_passing_tolerance_s']:.3g}",
            ctx.drop_episodes_fix(episodes) + " (LeRobot's video decoding fails on these mid-training)",
            episodes=episodes,
            **timing,
        )
    return ok(
        "timestamps", f"within {ctx.tolerance_s:g} s of frame_index/{ctx.fps:g} (worst {worst_overall:.2g} s)", **timing
    )


def _round_up(seconds: float) -> float:
    """The smallest three-significant-digit tolerance above ``seconds`` (what to pass to --tolerance-s;
    LeRobot compares with ``<``, so equal would not pass)."""
    if seconds <= 0:
        return 0.0
    scale = 10 ** (math.floor(math.log10(seconds)) - 2)
    return float(f"{(math.floor(seconds / scale) + 1) * scale:.3g}")


# --- values -----------------------------------------------------------------------------------


def _value_keys(frames: Frames, spec: FederationSpec) -> list[str]:
    """The spec's vector features found in the data; every vector read when the data has none of them."""
    return [k for k in spec.features if k in frames.vectors] or list(frames.vectors)


def check_finite(ctx: Context) -> CheckResult:
    frames = ctx.frames
    if frames is None or not (keys := _value_keys(frames, ctx.spec)):
        return skip("values: finite", "no state/action data")
    found: list[str] = []
    episodes: set[int] = set()
    for key in keys:
        bad = frames.summary(key).nonfinite
        if bad is not None:
            rows = np.any(bad, axis=1)
            joints = ctx.joint_names(key, np.flatnonzero(np.any(bad, axis=0)))
            in_episodes = frames.rows_to_episodes(rows)
            found.append(
                f"{key} [{', '.join(joints)}] in {int(rows.sum())} frame(s) of episode(s) {short_ranges(in_episodes)}"
            )
            episodes.update(in_episodes)
    if found:
        episodes_list = sorted(episodes)
        return fail(
            "values: finite",
            "NaN/Inf in " + "; ".join(found),
            ctx.drop_episodes_fix(episodes_list),
            episodes=episodes_list,
        )
    return ok("values: finite", f"no NaN/Inf in {', '.join(keys)}")


def check_dead_joints(ctx: Context) -> CheckResult:
    frames = ctx.frames
    if frames is None or not (keys := _value_keys(frames, ctx.spec)):
        return skip("values: motion", "no state/action data")
    found: list[str] = []
    episodes: set[int] = set()
    for key in keys:
        summary = frames.summary(key)
        dead = summary.episode_max == summary.episode_min  # (episodes, joints)
        for joint in np.flatnonzero(dead.any(axis=0)):
            in_episodes = [int(e) for e in frames.episode_ids[dead[:, joint]]]
            found.append(f"{key} {ctx.joint_names(key, [joint])[0]} in episode(s) {short_ranges(in_episodes)}")
            episodes.update(in_episodes)
    if found:
        return warn(
            "values: motion",
            "constant over a whole episode (dead motor or unplugged cable?): " + "; ".join(found),
            "check the motor and its cable, then re-record; or drop those episodes with lerobot-edit-dataset",
            episodes=sorted(episodes),
        )
    return ok("values: motion", "every joint moves in every episode")


def check_outliers(ctx: Context) -> CheckResult:
    frames = ctx.frames
    if frames is None or not (keys := _value_keys(frames, ctx.spec)):
        return skip("values: range", "no state/action data")
    found: list[str] = []
    episodes: set[int] = set()
    for key in keys:
        summary = frames.summary(key)
        low, high = _quantiles(frames.vectors[key], (ctx.files.stats or {}).get(key, {}))
        span = np.maximum(high - low, 1e-6)
        # An episode has a far value exactly when its min or max is far: no pass over the frames.
        outside = (summary.episode_min < low - OUTLIER_SPANS * span) | (
            summary.episode_max > high + OUTLIER_SPANS * span
        )
        if outside.any():
            joints = ctx.joint_names(key, np.flatnonzero(outside.any(axis=0)))
            in_episodes = [int(e) for e in frames.episode_ids[outside.any(axis=1)]]
            found.append(f"{key} [{', '.join(joints)}] in episode(s) {short_ranges(in_episodes)}")
            episodes.update(in_episodes)
    if found:
        return warn(
            "values: range",
            "values far outside the q01..q99 range of the stats: " + "; ".join(found),
            "look for encoder glitches or a recalibrated arm in those episodes; drop them if they are wrong",
            episodes=sorted(episodes),
        )
    return ok("values: range", f"within {OUTLIER_SPANS:g} q01..q99 spans of the stats")


def _quantiles(values: np.ndarray, stats: Any) -> tuple[np.ndarray, np.ndarray]:
    """q01 and q99 per joint from the feature's stats.json entry, or from the data when it lacks them."""
    try:
        low, high = np.asarray(stats["q01"], dtype=np.float64), np.asarray(stats["q99"], dtype=np.float64)
        if low.shape == high.shape == values.shape[1:]:
            return low, high
    except (KeyError, TypeError, ValueError):
        pass
    return np.nanpercentile(values, 1, axis=0), np.nanpercentile(values, 99, axis=0)


def check_stats(ctx: Context) -> CheckResult:
    stats = ctx.files.stats
    fix = (
        f"recompute them into a copy (policies normalise with these): lerobot-edit-dataset --repo_id "
        f"{ctx.uri.repo_id} --root {ctx.files.root} --new_root {ctx.files.root}_stats --operation.type recompute_stats"
    )
    if stats is None:
        return fail("stats", ctx.files.stats_problem, fix)
    frames = ctx.frames
    keys = _value_keys(frames, ctx.spec) if frames is not None else []
    problems = [p for key in keys for p in _stats_problems(frames, key, stats.get(key))] if frames is not None else []
    if problems:
        return fail("stats", "meta/stats.json does not describe the data: " + "; ".join(problems), fix)
    return ok("stats", f"present and consistent with the data for {', '.join(keys) or 'no vector feature'}")


def _stats_problems(frames: Frames, key: str, entry: Any) -> list[str]:
    """How the stats.json ``entry`` of vector ``key`` disagrees with the data; empty when it agrees."""
    if not isinstance(entry, dict) or not all(m in entry for m in ("min", "max", "mean", "std")):
        return [f"{key}: min/max/mean/std missing"]
    width = frames.vectors[key].shape[1:]
    try:
        recorded = {m: np.asarray(entry[m], dtype=np.float64).reshape(-1) for m in ("min", "max", "mean")}
    except (TypeError, ValueError):
        return [f"{key}: not numbers"]
    if any(v.shape != width for v in recorded.values()):
        return [f"{key}: stats shape {recorded['min'].shape}, data {width}"]
    problems = []
    summary = frames.summary(key)
    actual = {"min": summary.minimum, "max": summary.maximum, "mean": summary.mean}
    off = [m for m in recorded if not np.allclose(recorded[m], actual[m], rtol=1e-3, atol=1e-3)]
    if off:
        problems.append(f"{key}: {'/'.join(off)} differ from the data")
    count = np.asarray(entry.get("count", [frames.rows])).reshape(-1)
    if count.size and int(count[0]) != frames.rows:
        problems.append(f"{key}: count {int(count[0])}, data has {frames.rows} frames")
    return problems
