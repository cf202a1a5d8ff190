"""How fast is `zk0 dataset validate` without media, against just opening the dataset in LeRobot?

Builds a 1,000,000-frame SO-100 state/action dataset in the LeRobot v3.0 layout (written
directly with pyarrow: LeRobot's frame-by-frame writer would take minutes), then times
  1. zk0's non-media validation (every check but video/image decoding), best of --repeat runs;
  2. LeRobotDataset(repo_id, root=...) on the same directory, first open (builds its arrow
     cache) and a second open (cache warm).
and prints frames/s and the ratios. Usage: .venv/bin/python bench/validate_throughput.py [--frames N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

JOINTS = ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos", "wrist_roll.pos", "gripper.pos"]
FPS = 30


def build(root: Path, frames: int, episode_length: int, files: int) -> None:
    episodes = frames // episode_length
    rng = np.random.default_rng(0)
    episode = np.repeat(np.arange(episodes, dtype=np.int64), episode_length)
    frame = np.tile(np.arange(episode_length, dtype=np.int64), episodes)
    t = frame / FPS
    phase = rng.uniform(0, 2 * np.pi, size=(episodes, 6)).repeat(episode_length, axis=0)
    action = (40 * np.sin(t[:, None] * np.linspace(0.5, 1.5, 6) + phase)).astype(np.float32)
    state = (action + rng.normal(0, 0.2, action.shape)).astype(np.float32)
    columns = {
        "action": action,
        "observation.state": state,
        "timestamp": t.astype(np.float32),
        "frame_index": frame,
        "episode_index": episode,
        "index": np.arange(frames, dtype=np.int64),
        "task_index": np.zeros(frames, np.int64),
    }
    per_file = int(np.ceil(episodes / files))
    file_of_episode = np.arange(episodes) // per_file
    for number in range(files):
        rows = file_of_episode[episode] == number
        table = pa.table({k: (_vectors(v[rows]) if v.ndim == 2 else pa.array(v[rows])) for k, v in columns.items()})
        path = root / f"data/chunk-000/file-{number:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)

    starts = np.arange(episodes, dtype=np.int64) * episode_length
    meta = pa.table(
        {
            "episode_index": np.arange(episodes, dtype=np.int64),
            "tasks": pa.array([["Pick up the cube and place it in the box"]] * episodes),
            "length": np.full(episodes, episode_length, dtype=np.int64),
            "data/chunk_index": np.zeros(episodes, dtype=np.int64),
            "data/file_index": file_of_episode.astype(np.int64),
            "dataset_from_index": starts,
            "dataset_to_index": starts + episode_length,
            "meta/episodes/chunk_index": np.zeros(episodes, dtype=np.int64),
            "meta/episodes/file_index": np.zeros(episodes, dtype=np.int64),
        }
    )
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(meta, root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(
        pa.table({"task_index": [0], "task": ["Pick up the cube and place it in the box"]}), root / "meta/tasks.parquet"
    )
    vector = {"dtype": "float32", "shape": [6], "names": JOINTS}
    scalar = lambda dtype: {"dtype": dtype, "shape": [1], "names": None}  # noqa: E731
    info = {
        "codebase_version": "v3.0",
        "robot_type": "so100_follower",
        "total_episodes": episodes,
        "total_frames": frames,
        "total_tasks": 1,
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 200,
        "fps": FPS,
        "splits": {"train": f"0:{episodes}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": None,
        "features": {
            "action": vector,
            "observation.state": vector,
            "timestamp": scalar("float32"),
            "frame_index": scalar("int64"),
            "episode_index": scalar("int64"),
            "index": scalar("int64"),
            "task_index": scalar("int64"),
        },
    }
    (root / "meta/info.json").write_text(json.dumps(info, indent=2))
    stats = {key: _stats(columns[key]) for key in ("action", "observation.state")}
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        stats[key] = _stats(columns[key].reshape(-1, 1))
    (root / "meta/stats.json").write_text(json.dumps(stats))


def _vectors(values: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _stats(values: np.ndarray) -> dict:
    v = values.astype(np.float64)
    q = {f"q{p:02d}": np.percentile(v, p, axis=0).tolist() for p in (1, 10, 50, 90, 99)}
    return {
        "min": v.min(0).tolist(),
        "max": v.max(0).tolist(),
        "mean": v.mean(0).tolist(),
        "std": v.std(0).tolist(),
        "count": [len(v)],
        **q,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--episode-length", type=int, default=1000)
    parser.add_argument("--files", type=int, default=4, help="data parquet files")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="zk0-bench-") as tmp:
        os.environ.update(HF_HUB_OFFLINE="1", HF_HOME=f"{tmp}/hf", HF_LEROBOT_HOME=f"{tmp}/hf/lerobot")
        root = Path(tmp) / "million"
        started = time.perf_counter()
        build(root, args.frames, args.episode_length, args.files)
        print(f"built {args.frames:,} frames in {time.perf_counter() - started:.1f} s at {root}", file=sys.stderr)

        from zk0cli.core.checks import Status
        from zk0cli.datasets.uri import parse_uri
        from zk0cli.datasets.validate import validate_dataset

        uri = parse_uri(f"local:{root}")
        runs, cpu = [], []
        for _ in range(args.repeat):
            started, cpu_started = time.perf_counter(), time.process_time()
            report = validate_dataset(uri)
            runs.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
        failed = [c.name for c in report.checks if c.status is Status.FAIL]
        assert failed == ["spec: cameras"], failed  # the bench set has no camera on purpose

        from lerobot.datasets.lerobot_dataset import LeRobotDataset  # imported before timing

        opens = []
        for _ in range(2):
            started = time.perf_counter()
            dataset = LeRobotDataset(uri.repo_id, root=root, video_backend="pyav")
            opens.append(time.perf_counter() - started)
            assert len(dataset) == args.frames
            del dataset

    validate_s = min(runs)
    result = {
        "frames": args.frames,
        "cpus": os.cpu_count(),
        "validate_s_best": round(validate_s, 3),
        "validate_s_runs": [round(r, 3) for r in runs],
        "validate_frames_per_s": round(args.frames / validate_s),
        "validate_cpu_s_best": round(min(cpu), 3),  # all threads; less sensitive to a busy machine than wall time
        "load_average_1min": round(os.getloadavg()[0], 2),
        "lerobot_open_first_s": round(opens[0], 3),
        "lerobot_open_cached_s": round(opens[1], 3),
        "ratio_validate_to_first_open": round(validate_s / opens[0], 3),
        "ratio_validate_to_cached_open": round(validate_s / opens[1], 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
