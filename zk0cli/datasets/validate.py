"""`zk0 dataset validate`: will this dataset be accepted, and if not, which episodes and what fix.

Every check works on whole parquet columns at once (numpy over pyarrow), never one frame at a
time, and media are only decoded with ``deep=True``. Checks never raise for what they find:
each finding is a CheckResult naming the episodes or files concerned and the fix.

This module runs them and holds the report; the checks are in check_structure (format, spec,
files, counts, episodes, tasks), check_values (time, values, stats) and media (videos, images).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zk0cli.core.checks import CheckResult, Status, skip, summarize
from zk0cli.core.errors import ExitCode
from zk0cli.datasets import check_structure, check_values, media
from zk0cli.datasets.check_context import BOOKKEEPING, Context, number
from zk0cli.datasets.layout import Progress, disk_size, read_dataset
from zk0cli.datasets.spec import FederationSpec, load_spec
from zk0cli.datasets.uri import DatasetUri, dataset_root, info_features, read_info

DEFAULT_TOLERANCE_S = 1e-4  # LeRobot's own tolerance_s


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
    # The tolerance report: smallest passing tolerance, worst episodes.
    timing: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return sum(c.status is Status.FAIL for c in self.checks)

    @property
    def warnings(self) -> int:
        return sum(c.status is Status.WARN for c in self.checks)

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.FAILED if self.errors else ExitCode.OK

    def summary(self) -> dict[str, Any]:
        return {
            "errors": self.errors,
            "warnings": self.warnings,
            "episodes": self.episodes,
            "frames": self.frames,
            "duration_s": round(self.duration_s, 3),
            "size_bytes": self.size_bytes,
            **summarize(self.checks),
        }

    def to_dict(self) -> dict[str, Any]:
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
    root = dataset_root(uri)  # a Hub download shows its own files and bytes (hub_progress)
    info = read_info(root)
    report = ValidationReport(str(uri), str(root), federation.name, tolerance_s, deep, checks=[])
    report.size_bytes = disk_size(root)
    format_check = check_structure.check_format(uri, info)
    report.checks.append(format_check)
    if format_check.status is Status.FAIL:
        report.checks.append(skip("other checks", "not run: the layout of this version differs"))
        return report

    fps = number(info.get("fps")) or 0.0
    vector_keys = _vector_keys(info, federation)
    files = read_dataset(root, info, vector_keys, progress)
    ctx = Context(uri, files, federation, tolerance_s, fps, files.frames)
    for check in CHECKS:
        report.checks.extend(_as_list(check(ctx)))
    report.checks.extend(media.check_media(ctx.files, fps=fps, tolerance_s=tolerance_s, deep=deep, progress=progress))

    report.frames = ctx.frames.rows if ctx.frames else int(number(info.get("total_frames")) or 0)
    report.episodes = len(ctx.frames.episode_ids) if ctx.frames else int(number(info.get("total_episodes")) or 0)
    report.duration_s = report.frames / fps if fps else 0.0
    report.timing = next((c.data for c in report.checks if c.name == "timestamps" and c.data), {})
    return report


def _as_list(result: CheckResult | list[CheckResult]) -> list[CheckResult]:
    return result if isinstance(result, list) else [result]


def _vector_keys(info: dict[str, Any], spec: FederationSpec) -> list[str]:
    """Numeric vector features to read from the data files: the spec's, and any other float vector."""
    features = info_features(info)
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


CHECKS = (
    check_structure.check_info_fields,
    check_structure.check_features,
    check_structure.check_spec,
    check_structure.check_data_files,
    check_structure.check_counts,
    check_structure.check_episode_metadata,
    check_structure.check_doubled_data,
    check_values.check_frame_index,
    check_values.check_timestamps,
    check_values.check_finite,
    check_values.check_dead_joints,
    check_values.check_outliers,
    check_values.check_stats,
    check_structure.check_tasks,
)
