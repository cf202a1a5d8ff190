"""Media checks: video files exist where meta/episodes points; with ``deep``, frames decode.

Deep decoding goes through LeRobot's own PyAV decoder with the training tolerance, at the
first and last frame of every episode, so a timestamp problem shows up here and not
mid-training. Image features (PNG bytes in the parquet) are decoded at the same frames.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from zk0cli.core.checks import CheckResult, fail, ok, skip
from zk0cli.datasets.layout import DatasetFiles, Frames, Progress
from zk0cli.datasets.layout import short_ranges as _short_list
from zk0cli.datasets.uri import info_features

DEEP_HINT = "add --deep to decode the first and last frame of every episode"


def camera_keys(info: dict[str, Any], dtype: str) -> list[str]:
    return [k for k, f in info_features(info).items() if isinstance(f, dict) and f.get("dtype") == dtype]


def check_media(
    files: DatasetFiles, *, fps: float, tolerance_s: float, deep: bool, progress: Progress | None = None
) -> list[CheckResult]:
    videos = camera_keys(files.info, "video")
    images = camera_keys(files.info, "image")
    results = [check_video_files(files, videos, fps, tolerance_s)]
    if videos:
        results.append(
            check_video_decoding(files, videos, tolerance_s, progress)
            if deep
            else skip("media: video decoding", DEEP_HINT)
        )
    if images:
        results.append(
            check_image_decoding(files, images, progress) if deep else skip("media: image decoding", DEEP_HINT)
        )
    return results


def video_locations(files: DatasetFiles, key: str) -> dict[str, list[int]] | None:
    """Video file (relative path) -> episodes stored in it, from meta/episodes; None if not described."""
    columns = files.video_columns.get(key, {})
    template = files.info.get("video_path")
    if files.episodes is None or not isinstance(template, str) or not {"chunk_index", "file_index"} <= set(columns):
        return None
    locations: dict[str, list[int]] = {}
    for episode, chunk, number in zip(
        files.episodes["episode_index"], columns["chunk_index"], columns["file_index"], strict=True
    ):
        path = template.format(video_key=key, chunk_index=int(chunk), file_index=int(number))
        locations.setdefault(path, []).append(int(episode))
    return locations


def check_video_files(files: DatasetFiles, keys: list[str], fps: float, tolerance_s: float) -> CheckResult:
    name = "media: videos"
    if not keys:
        return ok(name, "no video features (cameras stored as images)")
    missing, undescribed, spans = {}, [], []
    for key in keys:
        locations = video_locations(files, key)
        if locations is None:
            undescribed.append(key)
            continue
        for path, episodes in locations.items():
            if not (files.root / path).is_file():
                missing[path] = episodes
        spans.extend(_span_mismatch(files, key, fps, tolerance_s))
    problems = []
    if missing:
        problems.append("missing " + ", ".join(f"{p} (episodes {_short_list(e)})" for p, e in missing.items()))
    if undescribed:
        problems.append(f"meta/episodes has no videos/<key>/chunk_index, file_index for {', '.join(undescribed)}")
    if spans:
        problems.append(f"video from/to_timestamp do not span length/fps for episode(s) {_short_list(spans)}")
    if problems:
        fix = (
            "copy the videos/ folder from the recording machine (training decodes every camera)"
            if missing
            else "re-export the dataset with LeRobot's writer"
        )
        return fail(
            name,
            "; ".join(problems),
            fix,
            missing=sorted(missing),
            episodes=sorted({e for eps in missing.values() for e in eps} | set(spans)),
        )
    count = sum(len(video_locations(files, k) or {}) for k in keys)
    return ok(name, f"{count} video file(s) for {len(keys)} camera(s) present")


def _span_mismatch(files: DatasetFiles, key: str, fps: float, tolerance_s: float) -> list[int]:
    columns = files.video_columns.get(key, {})
    if files.episodes is None or not fps or not {"from_timestamp", "to_timestamp"} <= set(columns):
        return []
    span = columns["to_timestamp"].astype(np.float64) - columns["from_timestamp"].astype(np.float64)
    expected = files.episodes["length"] / fps
    wrong = np.abs(span - expected) > tolerance_s + 1e-6
    return [int(e) for e in files.episodes["episode_index"][wrong]]


def _episode_ends(frames: Frames) -> dict[int, tuple[float, float]]:
    """Episode -> (first, last) stored timestamp, the times training would ask the decoder for."""
    last_rows = frames.starts + frames.lengths - 1
    return {
        int(e): (float(frames.timestamp[s]), float(frames.timestamp[t]))
        for e, s, t in zip(frames.episode_ids, frames.starts, last_rows, strict=True)
    }


def check_video_decoding(
    files: DatasetFiles, keys: list[str], tolerance_s: float, progress: Progress | None
) -> CheckResult:
    if progress:  # importing LeRobot's decoder (torch) takes seconds: say what is happening
        progress("loading LeRobot's video decoder", 0, 1)
    from lerobot.datasets.video_utils import decode_video_frames_pyav

    if progress:
        progress("loading LeRobot's video decoder", 1, 1)
    name = "media: video decoding"
    if files.frames is None or files.episodes is None:
        return skip(name, "no readable data or episode metadata")
    ends = _episode_ends(files.frames)
    jobs: list[tuple[str, int, Path, float, float]] = []  # (key, episode, video path, first ts, last ts)
    for key in keys:
        # A camera without from_timestamp in meta/episodes starts every episode at 0 s.
        from_timestamps: np.ndarray | list[float] = files.video_columns.get(key, {}).get("from_timestamp", [])
        starts = dict(zip(files.episodes["episode_index"].tolist(), from_timestamps, strict=False))
        for path, episodes in (video_locations(files, key) or {}).items():
            if (files.root / path).is_file():
                jobs.extend(
                    (
                        key,
                        e,
                        files.root / path,
                        float(starts.get(e, 0.0)) + ends[e][0],
                        float(starts.get(e, 0.0)) + ends[e][1],
                    )
                    for e in episodes
                    if e in ends
                )
    if not jobs:
        return skip(name, "no video file present to decode")
    failures: dict[str, list[int]] = {}
    for done, (key, episode, video, first, last) in enumerate(jobs, start=1):
        expected = tuple(files.info["features"][key]["shape"])
        for timestamp in (first, last):
            problem = _decode_problem(decode_video_frames_pyav, video, timestamp, tolerance_s, expected)
            if problem:
                failures.setdefault(f"{key}: {problem}", []).append(episode)
                break
        if progress:
            progress("decoding videos", done, len(jobs))
    if failures:
        detail = "; ".join(f"{why} (episode(s) {_short_list(eps)})" for why, eps in failures.items())
        return fail(
            name,
            detail,
            "re-encode the videos (lerobot-edit-dataset --operation.type reencode_videos) or drop the episodes",
            episodes=sorted({e for eps in failures.values() for e in eps}),
        )
    return ok(name, f"first and last frame of {len(jobs)} episode-camera pair(s) decode within {tolerance_s:g} s")


def _decode_problem(
    decode: Callable[..., Any], path: Path, timestamp: float, tolerance_s: float, expected: tuple[int, ...]
) -> str:
    try:
        frames = decode(path, [timestamp], tolerance_s, return_uint8=True)
    except Exception as exc:  # noqa: BLE001 - PyAV and LeRobot raise many types; each is a finding
        return f"{type(exc).__name__} at {timestamp:.3f} s: {str(exc).splitlines()[0][:160]}"
    height, width, channels = expected
    shape = tuple(frames.shape[1:])
    if shape != (channels, height, width):
        return f"frames are {shape[1]}x{shape[2]}x{shape[0]}, info.json says {height}x{width}x{channels}"
    return ""


def check_image_decoding(files: DatasetFiles, keys: list[str], progress: Progress | None) -> CheckResult:
    from PIL import Image

    name = "media: image decoding"
    failures: dict[str, list[int]] = {}
    decoded = 0
    paths = sorted(files.root.glob("data/*/*.parquet"))
    for number, path in enumerate(paths, start=1):
        try:
            table = pq.read_table(path, columns=["episode_index", *keys])
        except (pa.ArrowException, OSError, KeyError):
            continue  # reported by the data files / features checks
        episode = table["episode_index"].to_numpy()
        first = np.unique(episode, return_index=True)[1]
        last = len(episode) - 1 - np.unique(episode[::-1], return_index=True)[1]
        for key in keys:
            expected = tuple(files.info["features"][key]["shape"])
            cells = table[key].take(pa.array(np.concatenate([first, last]))).to_pylist()
            for row, cell in zip(np.concatenate([first, last]), cells, strict=True):
                problem = _image_problem(Image, cell, expected)
                decoded += 1
                if problem:
                    failures.setdefault(f"{key}: {problem}", []).append(int(episode[row]))
        if progress:
            progress("decoding images", number, len(paths))
    if failures:
        detail = "; ".join(f"{why} (episode(s) {_short_list(sorted(set(eps)))})" for why, eps in failures.items())
        return fail(
            name,
            detail,
            "re-export the images, or drop the episodes",
            episodes=sorted({e for eps in failures.values() for e in eps}),
        )
    return ok(name, f"{decoded} image(s) at episode starts and ends decode to their declared shape")


def _image_problem(image_module: ModuleType, cell: object, expected: tuple[int, ...]) -> str:
    data = cell.get("bytes") if isinstance(cell, dict) else None
    if not data:
        return "no image bytes"
    try:
        with image_module.open(io.BytesIO(data)) as image:
            array = np.asarray(image.convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
        return f"cannot decode ({type(exc).__name__})"
    if array.shape != expected:
        return f"decodes to {array.shape}, info.json says {expected}"
    return ""
