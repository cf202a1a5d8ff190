"""Dataset checks of format, federation fit, files, counts, episode metadata and tasks: is every
frame where the metadata says, once, and does the layout match what the federation trains on."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np

from zk0cli.core.checks import CheckResult, fail, ok, skip, warn
from zk0cli.datasets.check_context import BOOKKEEPING, Context, feature_names, number
from zk0cli.datasets.layout import Frames, rel, short_ranges
from zk0cli.datasets.uri import DatasetUri, codebase_major, convert_command

REQUIRED_INFO_FIELDS = (
    "codebase_version",
    "fps",
    "features",
    "total_episodes",
    "total_frames",
    "total_tasks",
    "data_path",
    "chunks_size",
)


# --- format -----------------------------------------------------------------------------------


def check_format(uri: DatasetUri, info: dict[str, Any]) -> CheckResult:
    version = info.get("codebase_version")
    major = codebase_major(info)
    if major is None:
        return fail(
            "format",
            f"meta/info.json has no usable codebase_version ({version!r})",
            'a LeRobot v3.0 dataset says "codebase_version": "v3.0"; re-export it with LeRobot >= 0.4',
        )
    if major < 3:
        return fail(
            "format",
            f"LeRobot {version} layout; LeRobot 0.6.1 and zk0 read v3.0",
            f"convert it: {convert_command(uri)}",
            version=version,
        )
    if major > 3:
        return fail(
            "format", f"LeRobot {version} is newer than LeRobot 0.6.1 reads", "upgrade lerobot", version=version
        )
    return ok("format", f"LeRobot {version}", version=version)


def check_info_fields(ctx: Context) -> CheckResult:
    missing = [k for k in REQUIRED_INFO_FIELDS if k not in ctx.info]
    if "video_path" not in ctx.info and any(
        f.get("dtype") == "video" for f in ctx.features.values() if isinstance(f, dict)
    ):
        missing.append("video_path")
    if missing:
        return fail(
            "info fields",
            f"meta/info.json lacks {', '.join(missing)}",
            "restore meta/info.json from the original recording",
            missing=missing,
        )
    if not ctx.fps or ctx.fps <= 0:
        return fail("info fields", f"fps is {ctx.info.get('fps')!r}", "set the recording's fps in meta/info.json")
    return ok("info fields", f"all {len(REQUIRED_INFO_FIELDS)} required fields present")


def check_features(ctx: Context) -> CheckResult:
    features = ctx.features
    malformed = [
        k
        for k, f in features.items()
        if not (
            isinstance(f, dict)
            and isinstance(f.get("dtype"), str)
            and isinstance(f.get("shape"), list)
            and all(isinstance(n, int) for n in f["shape"])
        )
    ]
    absent = [k for k in BOOKKEEPING if k not in features]
    problems = []
    if malformed:
        problems.append(f"no dtype/shape for {', '.join(malformed)}")
    if absent:
        problems.append(f"info.json lacks feature(s) {', '.join(absent)}")
    frames = ctx.frames
    if frames is not None:
        stored = [k for k, f in features.items() if isinstance(f, dict) and f.get("dtype") != "video"]
        not_in_data = [k for k in stored if k not in frames.columns]
        if not_in_data:
            problems.append(f"data files lack column(s) {', '.join(not_in_data)}")
        for key, array in frames.vectors.items():
            declared = features.get(key, {}).get("shape") if isinstance(features.get(key), dict) else None
            if declared and math.prod(declared) != array.shape[1]:
                problems.append(
                    f"{key} has {array.shape[1]} values per frame in the data, info.json says {tuple(declared)}"
                )
        for key, problem in frames.vector_problems.items():
            problems.append(f"{key}: {problem}")
    if problems:
        return fail(
            "features",
            "; ".join(problems),
            "the data and meta/info.json disagree: re-export the dataset with LeRobot's writer",
            malformed=malformed,
            absent=absent,
        )
    return ok(
        "features",
        f"{len(features)} features, each with dtype and shape",
        features={k: {"dtype": f["dtype"], "shape": f["shape"]} for k, f in features.items()},
    )


# --- federation fit ---------------------------------------------------------------------------


def check_spec(ctx: Context) -> list[CheckResult]:
    spec = ctx.spec
    results = [_check_spec_feature(ctx, key) for key in spec.features]
    cameras = {
        k: f
        for k, f in ctx.features.items()
        if k.startswith(spec.camera_prefix) and isinstance(f, dict) and f.get("dtype") in spec.camera_dtypes
    }
    described = ", ".join(
        f"{k[len(spec.camera_prefix) :]} {tuple(f.get('shape', ()))} {f.get('dtype')}" for k, f in cameras.items()
    )
    if len(cameras) < spec.min_cameras:
        results.append(
            fail(
                "spec: cameras",
                f"{len(cameras)} camera(s), the {spec.name} federation needs {spec.min_cameras}",
                f"record with at least {spec.min_cameras} camera(s) named {spec.camera_prefix}<name>",
                cameras=list(cameras),
            )
        )
    else:
        results.append(ok("spec: cameras", f"{len(cameras)}: {described}", cameras=list(cameras)))
    if spec.fps is not None:
        if ctx.fps != spec.fps:
            results.append(
                fail(
                    "spec: fps",
                    f"{ctx.info.get('fps')} fps; the {spec.name} federation trains at {spec.fps}",
                    f"record at {spec.fps} fps, or use a spec with fps = {ctx.info.get('fps')} (--spec PATH)",
                )
            )
        else:
            results.append(ok("spec: fps", f"{spec.fps} fps"))
    if spec.robot_types:
        robot = ctx.info.get("robot_type")
        if robot in spec.robot_types:
            results.append(ok("spec: robot type", str(robot)))
        else:
            results.append(
                warn(
                    "spec: robot type",
                    f"robot_type is {robot!r}, expected one of {', '.join(spec.robot_types)}",
                    "check that this recording comes from the federation's robot, then set robot_type "
                    "in meta/info.json",
                )
            )
    return results


def _check_spec_feature(ctx: Context, key: str) -> CheckResult:
    expected = ctx.spec.features[key]
    name = f"spec: {key}"
    feature = ctx.features.get(key)
    fix = (
        f"record {key} as {expected.dtype} {expected.shape}"
        + (f" named {', '.join(expected.names)}" if expected.names else "")
        + f" (the {ctx.spec.name} federation's layout), or use a spec that matches your robot (--spec PATH)"
    )
    if not isinstance(feature, dict):
        return fail(name, f"missing; the {ctx.spec.name} federation needs it", fix)
    problems = []
    if feature.get("dtype") != expected.dtype:
        problems.append(f"dtype {feature.get('dtype')}, expected {expected.dtype}")
    shape = tuple(feature.get("shape") or ())
    if shape != expected.shape:
        problems.append(f"shape {shape}, expected {expected.shape}")
    names = feature_names(feature.get("names"))
    if expected.names is not None and names != list(expected.names):
        problems.append(f"joint names {names}, expected {list(expected.names)}")
    stored = ctx.frames.vectors.get(key) if ctx.frames else None
    if stored is not None and stored.dtype.name != expected.dtype:
        problems.append(f"stored as {stored.dtype.name} in the data files")
    if problems:
        return fail(name, "; ".join(problems), fix)
    return ok(name, f"{expected.dtype} {expected.shape}" + (", joint names match" if expected.names else ""))


# --- files and counts -------------------------------------------------------------------------


def check_data_files(ctx: Context) -> CheckResult:
    unreadable = ctx.files.unreadable
    if unreadable:
        listed = "; ".join(f"{path} ({error})" for path, error in list(unreadable.items())[:4])
        return fail(
            "data files",
            f"{len(unreadable)} file(s) cannot be read: {listed}",
            "the file is damaged (truncated copy?): copy it again from the original recording",
            files=unreadable,
        )
    if ctx.frames is None:
        return fail(
            "data files",
            "no readable parquet file with an episode_index column under data/",
            "copy the data/ folder of the recording too",
        )
    return ok("data files", f"{len(ctx.frames.files)} parquet file(s) read")


def check_counts(ctx: Context) -> CheckResult:
    frames, episodes = ctx.frames, ctx.files.episodes
    if frames is None:
        return skip("counts", "no data to count")
    total = number(ctx.info.get("total_frames"))
    lengths = int(episodes["length"].sum()) if episodes is not None else None
    numbers = {"data rows": frames.rows, "info.total_frames": total, "sum of episode lengths": lengths}
    known = {k: v for k, v in numbers.items() if v is not None}
    if len(set(known.values())) == 1:
        return ok("counts", f"{frames.rows} frames in data/, info.json and meta/episodes", **numbers)
    detail = ", ".join(f"{k} {int(v)}" for k, v in known.items())
    fix = (
        "data/ holds more rows than the metadata describes: look for a copied parquet file (see 'doubled data')"
        if total is not None and frames.rows > total
        else "the metadata and data/ disagree: restore the recording's data/ and meta/ folders together"
    )
    return fail("counts", detail, fix, **numbers)


def check_episode_metadata(ctx: Context) -> CheckResult:
    episodes, frames = ctx.files.episodes, ctx.frames
    name = "episodes metadata"
    if episodes is None:
        return fail(
            name,
            ctx.files.episodes_problem or "meta/episodes cannot be read",
            "restore the meta/episodes folder from the original recording",
        )
    ids = episodes["episode_index"]
    total = int(number(ctx.info.get("total_episodes")) or 0)
    problems, concerned = [], set()
    duplicated = np.unique(ids[np.flatnonzero(np.diff(ids) == 0) + 1]) if len(ids) > 1 else ids[:0]
    if len(duplicated):
        problems.append(f"episode(s) {short_ranges(duplicated)} listed twice")
        concerned.update(duplicated.tolist())
    absent = np.setdiff1d(np.arange(total), ids)
    if len(absent):
        problems.append(f"no metadata row for episode(s) {short_ranges(absent)}")
        concerned.update(absent.tolist())
    if len(ids) != total:
        problems.append(f"{len(ids)} rows, info.total_episodes {total}")
    starts, ends, lengths = episodes["dataset_from_index"], episodes["dataset_to_index"], episodes["length"]
    bad_range = (ends - starts) != lengths
    if not len(absent):  # with a row missing, the gap it leaves is already explained
        bad_range[1:] |= starts[1:] != ends[:-1]
        if len(starts) and starts[0] != 0:
            bad_range[0] = True
    if bad_range.any():
        problems.append(f"dataset_from/to_index ranges not contiguous at episode(s) {short_ranges(ids[bad_range])}")
        concerned.update(ids[bad_range].tolist())
    if frames is not None:
        in_data = frames.episode_ids
        orphan = np.setdiff1d(in_data, ids)
        if len(orphan):
            problems.append(f"episode(s) {short_ranges(orphan)} have frames in data/ but no metadata row")
            concerned.update(orphan.tolist())
        empty = np.setdiff1d(ids, in_data)
        if len(empty):
            problems.append(f"episode(s) {short_ranges(empty)} have a metadata row but no frames")
            concerned.update(empty.tolist())
        common, in_meta, in_frames = np.intersect1d(ids, in_data, return_indices=True)
        wrong_length = common[lengths[in_meta] != frames.lengths[in_frames]]
        if len(wrong_length):
            problems.append(f"episode(s) {short_ranges(wrong_length)}: rows in data/ differ from length")
            concerned.update(wrong_length.tolist())
        wrong_index = _index_mismatch(frames, ids, starts)
        if len(wrong_index):
            problems.append(
                f"global index column disagrees with dataset_from_index in episode(s) {short_ranges(wrong_index)}"
            )
            concerned.update(wrong_index)
        misplaced = _misplaced_episodes(ctx, frames, episodes)
        if misplaced:
            problems.append(
                f"episode(s) {short_ranges(misplaced)} not in the data file meta/episodes names "
                f"(LeRobot reads only that file when it loads a subset of episodes)"
            )
            concerned.update(misplaced)
    if problems:
        return fail(
            name,
            "; ".join(problems),
            "restore meta/episodes from the original recording, or drop the broken episodes with lerobot-edit-dataset",
            episodes=sorted(int(e) for e in concerned),
        )
    return ok(name, f"{len(ids)} episodes, contiguous ranges matching the data")


def _misplaced_episodes(ctx: Context, frames: Frames, episodes: dict[str, np.ndarray]) -> list[int]:
    """Episodes whose rows are not all in the one data file meta/episodes points to."""
    ids, template = episodes["episode_index"], ctx.info.get("data_path")
    if not isinstance(template, str):
        return []
    file_number = {rel(ctx.files.root, path): number for number, path in enumerate(frames.files)}
    try:
        expected = np.array(
            [
                file_number.get(template.format(chunk_index=int(c), file_index=int(f)), -1)
                for c, f in zip(episodes["data/chunk_index"], episodes["data/file_index"], strict=True)
            ]
        )
    except (KeyError, ValueError, IndexError):
        return []
    lookup = np.full(int(max(ids.max(), frames.episode.max())) + 1, -2, dtype=np.int64)
    lookup[ids] = expected
    first = frames.per_episode(np.minimum, frames.file_id)
    last = frames.per_episode(np.maximum, frames.file_id)
    wanted = lookup[frames.episode_ids]
    wrong = (wanted != -2) & ((first != wanted) | (last != wanted))
    return [int(e) for e in frames.episode_ids[wrong]]


def _index_mismatch(frames: Frames, ids: np.ndarray, starts: np.ndarray) -> list[int]:
    """Episodes whose global `index` column is not dataset_from_index + frame_index."""
    if frames.index is None or not len(ids):
        return []
    if np.array_equal(starts, frames.starts) and np.array_equal(frames.index, np.arange(frames.rows)):
        return []  # the usual case, answered without a gather: ranges and index both count up from 0
    lookup = np.full(int(max(ids.max(), frames.episode.max())) + 1, -1, dtype=np.int64)
    lookup[ids] = starts
    episode_start = lookup[frames.episode]
    wrong = (episode_start >= 0) & (frames.index != episode_start + frames.frame)
    return frames.rows_to_episodes(wrong) if wrong.any() else []


def check_doubled_data(ctx: Context) -> CheckResult:
    frames = ctx.frames
    name = "doubled data"
    if frames is None:
        return skip(name, "no data")
    root = ctx.files.root
    copies = _identical_files(frames.files)
    problems, fixes = [], []
    for original, copy in copies:
        problems.append(f"{rel(root, copy)} is a byte copy of {rel(root, original)}")
        fixes.append(f"delete {rel(root, copy)}")
    stray = _unlisted_data_files(ctx)
    copied = {rel(root, copy) for _, copy in copies}
    stray = [s for s in stray if s not in copied]
    if stray:
        problems.append(f"{', '.join(stray)} not referenced by meta/episodes (LeRobot loads it anyway)")
        fixes.append(f"move {', '.join(stray)} out of data/")
    duplicated = _duplicated_frames(frames)
    if duplicated:
        problems.append(f"duplicated (episode_index, frame_index) rows in episode(s) {short_ranges(duplicated)}")
    if problems:
        return fail(
            name,
            "; ".join(problems),
            "; ".join(fixes) or "remove the duplicated rows: re-export the dataset",
            files=sorted(copied | set(stray)),
            episodes=duplicated,
        )
    return ok(name, "no copied data files, no duplicated frames")


def _identical_files(paths: list[Path]) -> list[tuple[Path, Path]]:
    """(original, copy) pairs of byte-identical files; only files of equal size are hashed."""
    by_size: dict[int, list[Path]] = {}
    for path in paths:
        by_size.setdefault(path.stat().st_size, []).append(path)
    pairs = []
    for same_size in (group for group in by_size.values() if len(group) > 1):
        seen: dict[str, Path] = {}
        for path in same_size:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest in seen:
                pairs.append((seen[digest], path))
            else:
                seen[digest] = path
    return pairs


def _unlisted_data_files(ctx: Context) -> list[str]:
    episodes, template = ctx.files.episodes, ctx.info.get("data_path")
    if episodes is None or not isinstance(template, str) or ctx.frames is None:
        return []
    try:
        listed = {
            template.format(chunk_index=int(c), file_index=int(f))
            for c, f in set(zip(episodes["data/chunk_index"], episodes["data/file_index"], strict=True))
        }
    except (KeyError, ValueError, IndexError):
        return []
    return [r for r in (rel(ctx.files.root, p) for p in ctx.frames.files) if r not in listed]


def _duplicated_frames(frames: Frames) -> list[int]:
    """Episodes holding the same frame_index twice. Cheap when frames are strictly increasing."""
    steps = np.diff(frames.frame)
    same_episode = np.diff(frames.episode) == 0
    if not np.any(same_episode & (steps <= 0)):
        return []
    order = np.lexsort((frames.frame, frames.episode))
    episode, frame = frames.episode[order], frames.frame[order]
    repeated = (np.diff(episode) == 0) & (np.diff(frame) == 0)
    return [int(e) for e in np.unique(episode[1:][repeated])]


# --- tasks ------------------------------------------------------------------------------------


def check_tasks(ctx: Context) -> CheckResult:
    tasks = ctx.files.tasks
    if tasks is None:
        return fail("tasks", ctx.files.tasks_problem, "restore meta/tasks.parquet from the original recording")
    problems, episodes = [], []
    empty = [i for i, text in tasks.items() if not isinstance(text, str) or not text.strip()]
    if empty:
        problems.append(f"empty instruction for task_index {short_ranges(empty)}")
    total = number(ctx.info.get("total_tasks"))
    if total is not None and total != len(tasks):
        problems.append(f"{len(tasks)} tasks, info.total_tasks {int(total)}")
    frames = ctx.frames
    if frames is not None and frames.task is not None:
        known = np.array(sorted(k for k in tasks if isinstance(k, int)), dtype=np.int64)
        unknown = ~np.isin(frames.task, known)
        if unknown.any():
            episodes = frames.rows_to_episodes(unknown)
            problems.append(
                f"task_index {short_ranges(np.unique(frames.task[unknown]))} not in meta/tasks.parquet "
                f"(episode(s) {short_ranges(episodes)})"
            )
    if problems:
        return fail(
            "tasks",
            "; ".join(problems),
            "every episode needs a non-empty instruction: fix meta/tasks.parquet "
            "(lerobot-edit-dataset --operation.type modify_tasks)",
            episodes=episodes,
        )
    shown = "; ".join(repr(t) for t in list(tasks.values())[:3]) + ("; ..." if len(tasks) > 3 else "")
    return ok("tasks", f"{len(tasks)} task(s): {shown}", tasks=list(tasks.values()))
