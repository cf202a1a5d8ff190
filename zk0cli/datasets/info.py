"""`zk0 dataset info`: what a dataset holds, from its metadata alone (fast, no data read)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zk0cli.datasets.layout import disk_size, load_tasks
from zk0cli.datasets.media import camera_keys
from zk0cli.datasets.uri import DatasetUri, dataset_root, info_features, read_info


def dataset_info(uri: DatasetUri) -> dict[str, Any]:
    """Robot type, fps, counts, duration, features, cameras, tasks, size on disk, codebase version."""
    root = dataset_root(uri, meta_only=True)
    info = read_info(root)
    features = info_features(info)
    fps = info.get("fps") or 0
    frames = int(info.get("total_frames") or 0)
    return {
        "uri": str(uri),
        "root": str(root),
        "codebase_version": info.get("codebase_version"),
        "robot_type": info.get("robot_type"),
        "fps": fps,
        "episodes": int(info.get("total_episodes") or 0),
        "frames": frames,
        "duration_s": round(frames / fps, 3) if fps else None,
        "features": {
            k: {"dtype": f.get("dtype"), "shape": f.get("shape"), "names": f.get("names")}
            for k, f in features.items()
            if isinstance(f, dict)
        },
        "cameras": camera_keys(info, "video") + camera_keys(info, "image"),
        "tasks": read_task_texts(root),
        "size_bytes": disk_size(root),
    }


def read_task_texts(root: Path) -> list[str]:
    """Task instructions from meta/tasks.parquet (v3) or meta/tasks.jsonl (v2.x); [] if neither reads."""
    parquet, jsonl = root / "meta" / "tasks.parquet", root / "meta" / "tasks.jsonl"
    if parquet.is_file():
        import pyarrow as pa

        try:
            return [str(text) for text in load_tasks(parquet).values()]
        except (pa.ArrowException, OSError, ValueError):
            return []
    if jsonl.is_file():
        texts = []
        for line in jsonl.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                texts.append(str(json.loads(line)["task"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        return texts
    return []
