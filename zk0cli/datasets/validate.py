"""`zk0 dataset validate`: will this dataset be accepted, and if not, which episodes and what fix.

Every check works on whole parquet columns at once (numpy over pyarrow), never one frame at a
time, and media are only decoded with ``deep=True``. Checks never raise for what they find:
each finding is a CheckResult naming the episodes or files concerned and the fix.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zk0cli.core.checks import CheckResult, Status, fail, ok, skip, summarize, warn
from zk0cli.core.errors import ExitCode
from zk0cli.datasets import media
from zk0cli.datasets.layout import DatasetFiles, Frames, Progress, disk_size, read_dataset, rel
from zk0cli.datasets.layout import short_ranges as _ranges
from zk0cli.datasets.spec import FederationSpec, load_spec
from zk0cli.datasets.uri import DatasetUri, codebase_major, convert_command, dataset_root, read_info

DEFAULT_TOLERANCE_S = 1e-4  # LeRobot's own tolerance_s
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
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
OUTLIER_SPANS = 3.0  # "far outside": beyond q01/q99 by this many q01..q99 spans


@dataclass
class ValidationReport:
    uri: str
    root: str
    spec: str
    tolerance_s: float
    deep: bool
    checks: list[CheckResult]
    episodes: int = 0
    frames: int = 0
    duration_s: float = 0.0
    size_bytes: int = 0
    timing: dict = field(default_factory=dict)  # the tolerance report: smallest passing tolerance, worst episodes

    @property
    def errors(self) -> int:
        return sum(c.status is Status.FAIL for c in self.checks)

    @property
    def warnings(self) -> int:
        return sum(c.status is Status.WARN for c in self.checks)

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.FAILED if self.errors else ExitCode.OK

    def summary(self) -> dict:
        return {
            "errors": self.errors,
            "warnings": self.warnings,
            "episodes": self.episodes,
            "frames": self.frames,
            "duration_s": round(self.duration_s, 3),
            "size_bytes": self.size_bytes,
            **summarize(self.checks),
        }

    def to_dict(self) -> dict:
        return {
            "uri": self.uri,
            "root": self.root,
            "spec": self.spec,
            "tolerance_s": self.tolerance_s,
            "deep": self.deep,
            "valid": not self.errors,
            "summary": self.summary(),
            "timing": self.timing,
            "checks": [c.to_dict() for c in self.checks],
        }


@dataclass
class Context:
    """What every check may look at."""

    uri: DatasetUri
    files: DatasetFiles
    spec: FederationSpec
    tolerance_s: float
    fps: float
    frames: Frames | None

    @property
    def info(self) -> dict:
        return self.files.info

    @property
    def features(self) -> dict:
        features = self.info.get("features")
        return features if isinstance(features, dict) else {}

    def drop_episodes_fix(self, episodes: list[int]) -> str:
        """LeRobot's own tool for removing episodes, writing a cleaned copy."""
        root = self.files.root
        return (
            f"re-record or drop episode(s) {_ranges(episodes)}: lerobot-edit-dataset --repo_id {self.uri.repo_id} "
            f"--root {root} --new_root {root}_clean --operation.type delete_episodes "
            f'--operation.episode_indices "{episodes[:50]}"'
        )


def validate_dataset(
    uri: DatasetUri,
    *,
    spec: str = "so100",
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    deep: bool = False,
    progress: Progress | None = None,
) -> ValidationReport:
    """Run every check on the dataset at ``uri``.

    Raises Zk0Error only when there is no dataset to check at all (bad URI, missing or empty
    directory, no or malformed meta/info.json, Hub unreachable); everything else is a finding.
    """
    federation = load_spec(spec)
    root = dataset_root(uri)
    info = read_info(uri, root)
    report = ValidationReport(str(uri), str(root), federation.name, tolerance_s, deep, checks=[])
    report.size_bytes = disk_size(root)
    format_check = check_format(uri, info)
    report.checks.append(format_check)
    if format_check.status is Status.FAIL:
        report.checks.append(skip("other checks", "not run: the layout of this version differs"))
        return report

    fps = _number(info.get("fps")) or 0.0
    vector_keys = _vector_keys(info, federation)
    files = read_dataset(root, info, vector_keys, progress)
    ctx = Context(uri, files, federation, tolerance_s, fps, files.frames)
    for check in CHECKS:
        report.checks.extend(_as_list(check(ctx)))
    report.checks.extend(media.check_media(ctx.files, fps=fps, tolerance_s=tolerance_s, deep=deep, progress=progress))

    report.frames = ctx.frames.rows if ctx.frames else int(_number(info.get("total_frames")) or 0)
    report.episodes = len(ctx.frames.episode_ids) if ctx.frames else int(_number(info.get("total_episodes")) or 0)
    report.duration_s = report.frames / fps if fps else 0.0
    report.timing = next((c.data for c in report.checks if c.name == "timestamps" and c.data), {})
    return report


def _as_list(result: CheckResult | list[CheckResult]) -> list[CheckResult]:
    return result if isinstance(result, list) else [result]


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _vector_keys(info: dict, spec: FederationSpec) -> list[str]:
    """Numeric vector features to read from the data files: the spec's, and any other float vector."""
    features = info.get("features") if isinstance(info.get("features"), dict) else {}
    keys = [k for k in spec.features if k in features]
    for key, feature in features.items():
        if (
            key not in keys
            and key not in BOOKKEEPING
            and isinstance(feature, dict)
            and str(feature.get("dtype", "")).startswith("float")
        ):
            keys.append(key)
    return keys


# --- format -----------------------------------------------------------------------------------


def check_format(uri: DatasetUri, info: dict) -> CheckResult:
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
    names = _feature_names(feature.get("names"))
    if expected.names is not None and names != list(expected.names):
        problems.append(f"joint names {names}, expected {list(expected.names)}")
    stored = ctx.frames.vectors.get(key) if ctx.frames else None
    if stored is not None and stored.dtype.name != expected.dtype:
        problems.append(f"stored as {stored.dtype.name} in the data files")
    if problems:
        return fail(name, "; ".join(problems), fix)
    return ok(name, f"{expected.dtype} {expected.shape}" + (", joint names match" if expected.names else ""))


def _feature_names(names) -> list[str] | None:
    """Feature names as a flat list: v3 stores a list; older exports a {"motors": [...]} dict."""
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    return list(names) if isinstance(names, list) else None


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
    total = _number(ctx.info.get("total_frames"))
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
    total = int(_number(ctx.info.get("total_episodes")) or 0)
    problems, concerned = [], set()
    duplicated = np.unique(ids[np.flatnonzero(np.diff(ids) == 0) + 1]) if len(ids) > 1 else ids[:0]
    if len(duplicated):
        problems.append(f"episode(s) {_ranges(duplicated)} listed twice")
        concerned.update(duplicated.tolist())
    absent = np.setdiff1d(np.arange(total), ids)
    if len(absent):
        problems.append(f"no metadata row for episode(s) {_ranges(absent)}")
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
        problems.append(f"dataset_from/to_index ranges not contiguous at episode(s) {_ranges(ids[bad_range])}")
        concerned.update(ids[bad_range].tolist())
    if frames is not None:
        in_data = frames.episode_ids
        orphan = np.setdiff1d(in_data, ids)
        if len(orphan):
            problems.append(f"episode(s) {_ranges(orphan)} have frames in data/ but no metadata row")
            concerned.update(orphan.tolist())
        empty = np.setdiff1d(ids, in_data)
        if len(empty):
            problems.append(f"episode(s) {_ranges(empty)} have a metadata row but no frames")
            concerned.update(empty.tolist())
        common, in_meta, in_frames = np.intersect1d(ids, in_data, return_indices=True)
        wrong_length = common[lengths[in_meta] != frames.lengths[in_frames]]
        if len(wrong_length):
            problems.append(f"episode(s) {_ranges(wrong_length)}: rows in data/ differ from length")
            concerned.update(wrong_length.tolist())
        wrong_index = _index_mismatch(frames, ids, starts)
        if len(wrong_index):
            problems.append(
                f"global index column disagrees with dataset_from_index in episode(s) {_ranges(wrong_index)}"
            )
            concerned.update(wrong_index)
        misplaced = _misplaced_episodes(ctx, ids)
        if misplaced:
            problems.append(
                f"episode(s) {_ranges(misplaced)} not in the data file meta/episodes names "
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


def _misplaced_episodes(ctx: Context, ids: np.ndarray) -> list[int]:
    """Episodes whose rows are not all in the one data file meta/episodes points to."""
    frames, episodes, template = ctx.frames, ctx.files.episodes, ctx.info.get("data_path")
    if not isinstance(template, str):
        return []
    file_number = {rel(ctx.files.root, path): number for number, path in enumerate(frames.files)}
    try:
        expected = np.array(
            [
                file_number.get(template.format(chunk_index=int(c), file_index=int(f)), -1)
                for c, f in zip(episodes["data/chunk_index"], episodes["data/file_index"])
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
        problems.append(f"duplicated (episode_index, frame_index) rows in episode(s) {_ranges(duplicated)}")
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
            for c, f in set(zip(episodes["data/chunk_index"], episodes["data/file_index"]))
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
            f"frame_index does not run 0, 1, 2... in episode(s) {_ranges(episodes)}",
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


def _value_keys(ctx: Context) -> list[str]:
    return [k for k in ctx.spec.features if ctx.frames and k in ctx.frames.vectors] or (
        list(ctx.frames.vectors) if ctx.frames else []
    )


def check_finite(ctx: Context) -> CheckResult:
    keys = _value_keys(ctx)
    if not keys:
        return skip("values: finite", "no state/action data")
    found, episodes = [], set()
    for key in keys:
        bad = ctx.frames.summary(key).nonfinite
        if bad is not None:
            rows = bad.any(axis=1)
            joints = _joint_names(ctx, key, np.flatnonzero(bad.any(axis=0)))
            in_episodes = ctx.frames.rows_to_episodes(rows)
            found.append(
                f"{key} [{', '.join(joints)}] in {int(rows.sum())} frame(s) of episode(s) {_ranges(in_episodes)}"
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
    keys = _value_keys(ctx)
    if not keys:
        return skip("values: motion", "no state/action data")
    found, episodes = [], set()
    for key in keys:
        summary = ctx.frames.summary(key)
        dead = summary.episode_max == summary.episode_min  # (episodes, joints)
        for joint in np.flatnonzero(dead.any(axis=0)):
            in_episodes = [int(e) for e in ctx.frames.episode_ids[dead[:, joint]]]
            found.append(f"{key} {_joint_names(ctx, key, [joint])[0]} in episode(s) {_ranges(in_episodes)}")
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
    keys = _value_keys(ctx)
    if not keys:
        return skip("values: range", "no state/action data")
    found, episodes = [], set()
    for key in keys:
        summary = ctx.frames.summary(key)
        low, high = _quantiles(ctx, key)
        span = np.maximum(high - low, 1e-6)
        # An episode has a far value exactly when its min or max is far: no pass over the frames.
        outside = (summary.episode_min < low - OUTLIER_SPANS * span) | (
            summary.episode_max > high + OUTLIER_SPANS * span
        )
        if outside.any():
            joints = _joint_names(ctx, key, np.flatnonzero(outside.any(axis=0)))
            in_episodes = [int(e) for e in ctx.frames.episode_ids[outside.any(axis=1)]]
            found.append(f"{key} [{', '.join(joints)}] in episode(s) {_ranges(in_episodes)}")
            episodes.update(in_episodes)
    if found:
        return warn(
            "values: range",
            "values far outside the q01..q99 range of the stats: " + "; ".join(found),
            "look for encoder glitches or a recalibrated arm in those episodes; drop them if they are wrong",
            episodes=sorted(episodes),
        )
    return ok("values: range", f"within {OUTLIER_SPANS:g} q01..q99 spans of the stats")


def _quantiles(ctx: Context, key: str) -> tuple[np.ndarray, np.ndarray]:
    """q01 and q99 per joint from stats.json, or from the data when the stats lack them."""
    values = ctx.frames.vectors[key]
    stats = (ctx.files.stats or {}).get(key, {})
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
    keys = _value_keys(ctx)
    problems = []
    for key in keys:
        entry = stats.get(key)
        if not isinstance(entry, dict) or not all(m in entry for m in ("min", "max", "mean", "std")):
            problems.append(f"{key}: min/max/mean/std missing")
            continue
        width = ctx.frames.vectors[key].shape[1:]
        try:
            recorded = {m: np.asarray(entry[m], dtype=np.float64).reshape(-1) for m in ("min", "max", "mean")}
        except (TypeError, ValueError):
            problems.append(f"{key}: not numbers")
            continue
        if any(v.shape != width for v in recorded.values()):
            problems.append(f"{key}: stats shape {recorded['min'].shape}, data {width}")
            continue
        summary = ctx.frames.summary(key)
        actual = {"min": summary.minimum, "max": summary.maximum, "mean": summary.mean}
        off = [m for m in recorded if not np.allclose(recorded[m], actual[m], rtol=1e-3, atol=1e-3)]
        if off:
            problems.append(f"{key}: {'/'.join(off)} differ from the data")
        count = np.asarray(entry.get("count", [ctx.frames.rows])).reshape(-1)
        if count.size and int(count[0]) != ctx.frames.rows:
            problems.append(f"{key}: count {int(count[0])}, data has {ctx.frames.rows} frames")
    if problems:
        return fail("stats", "meta/stats.json does not describe the data: " + "; ".join(problems), fix)
    return ok("stats", f"present and consistent with the data for {', '.join(keys) or 'no vector feature'}")


def _joint_names(ctx: Context, key: str, columns) -> list[str]:
    feature = ctx.features.get(key)
    names = _feature_names(feature.get("names")) if isinstance(feature, dict) else None
    return [names[c] if names and c < len(names) else f"#{c}" for c in columns]


# --- tasks ------------------------------------------------------------------------------------


def check_tasks(ctx: Context) -> CheckResult:
    tasks = ctx.files.tasks
    if tasks is None:
        return fail("tasks", ctx.files.tasks_problem, "restore meta/tasks.parquet from the original recording")
    problems, episodes = [], []
    empty = [i for i, text in tasks.items() if not isinstance(text, str) or not text.strip()]
    if empty:
        problems.append(f"empty instruction for task_index {_ranges(empty)}")
    total = _number(ctx.info.get("total_tasks"))
    if total is not None and total != len(tasks):
        problems.append(f"{len(tasks)} tasks, info.total_tasks {int(total)}")
    frames = ctx.frames
    if frames is not None and frames.task is not None:
        known = np.array(sorted(k for k in tasks if isinstance(k, int)), dtype=np.int64)
        unknown = ~np.isin(frames.task, known)
        if unknown.any():
            episodes = frames.rows_to_episodes(unknown)
            problems.append(
                f"task_index {_ranges(np.unique(frames.task[unknown]))} not in meta/tasks.parquet "
                f"(episode(s) {_ranges(episodes)})"
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


CHECKS = (
    check_info_fields,
    check_features,
    check_spec,
    check_data_files,
    check_counts,
    check_episode_metadata,
    check_doubled_data,
    check_frame_index,
    check_timestamps,
    check_finite,
    check_dead_joints,
    check_outliers,
    check_stats,
    check_tasks,
)
