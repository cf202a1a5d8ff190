"""Reading a LeRobot v3.0 dataset's files column-wise, for checks that must be fast.

Nothing here decodes an image or a video, and nothing imports LeRobot or torch: only the
columns the checks need are read from parquet (pyarrow) and turned into numpy arrays once.
Files that cannot be read are recorded, not raised, so the validator can name them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, SupportsInt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from zk0cli.core.files import JsonFileError, read_json

FRAME_COLUMNS = ("episode_index", "frame_index", "timestamp", "index", "task_index")
EPISODE_COLUMNS = (
    "episode_index",
    "length",
    "dataset_from_index",
    "dataset_to_index",
    "data/chunk_index",
    "data/file_index",
)
DATA_GLOB = "data/*/*.parquet"  # what LeRobot loads: every parquet file under data/, listed or not
EPISODES_GLOB = "meta/episodes/*/*.parquet"

Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass
class Frames:
    """Every frame's bookkeeping columns and float vectors, grouped by episode (stable order)."""

    episode: np.ndarray  # int64 (n,)
    frame: np.ndarray  # int64 (n,)
    timestamp: np.ndarray  # float64 (n,)
    index: np.ndarray | None  # int64 (n,), the global frame index
    task: np.ndarray | None  # int64 (n,)
    file_id: np.ndarray  # int32 (n,): position of the row's file in ``files``
    files: list[Path]  # data files that were read
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # key -> (n, d) float arrays
    vector_problems: dict[str, str] = field(default_factory=dict)  # key -> why it is not an (n, d) array
    missing_columns: list[str] = field(default_factory=list)  # wanted columns absent from some file
    columns: set[str] = field(default_factory=set)  # columns every data file has

    @property
    def rows(self) -> int:
        return len(self.episode)

    def __post_init__(self) -> None:
        boundaries = np.flatnonzero(np.diff(self.episode)) + 1
        self.starts = np.concatenate(([0], boundaries)) if self.rows else np.zeros(0, dtype=np.int64)
        self.lengths = np.diff(np.concatenate((self.starts, [self.rows])))
        self.episode_ids = self.episode[self.starts]

    def summary(self, key: str) -> VectorSummary:
        """Per-episode reductions of one vector column, computed once for all value checks."""
        cache = self.__dict__.setdefault("_summaries", {})
        if key not in cache:
            cache[key] = VectorSummary.of(self, self.vectors[key])
        return cache[key]

    def rows_to_episodes(self, mask: np.ndarray) -> list[int]:
        """Sorted episode indices of the rows where ``mask`` is true."""
        return [int(e) for e in np.unique(self.episode[mask])]

    def per_episode(self, reduce: np.ufunc, values: np.ndarray) -> np.ndarray:
        """``reduce`` (np.maximum, np.add...) over each episode's rows, one result per episode."""
        return reduce.reduceat(values, self.starts, axis=0)


@dataclass
class VectorSummary:
    """One pass of reductions over an (n, d) column, per episode; NaN are left out of min/max/sum."""

    episode_min: np.ndarray  # (episodes, d)
    episode_max: np.ndarray  # (episodes, d)
    episode_sum: np.ndarray  # (episodes, d) float64, finite values only
    finite_count: np.ndarray | int  # (d,); the row count when every value is finite
    nonfinite: np.ndarray | None  # (n, d) mask of NaN/Inf; None when all values are finite

    @classmethod
    def of(cls, frames: Frames, values: np.ndarray) -> VectorSummary:
        finite = np.isfinite(values)
        nonfinite = None if finite.all() else ~finite
        # Reduce along contiguous rows: (d, n) is several times faster than (n, d) with axis=0.
        columns = np.ascontiguousarray((values if nonfinite is None else np.where(finite, values, np.nan)).T)
        summable = columns if nonfinite is None else np.nan_to_num(columns, nan=0.0)
        return cls(
            episode_min=np.fmin.reduceat(columns, frames.starts, axis=1).T,
            episode_max=np.fmax.reduceat(columns, frames.starts, axis=1).T,
            episode_sum=np.add.reduceat(summable, frames.starts, axis=1, dtype=np.float64).T,
            finite_count=len(values) - (nonfinite.sum(axis=0) if nonfinite is not None else 0),
            nonfinite=nonfinite,
        )

    @property
    def minimum(self) -> np.ndarray:
        return np.fmin.reduce(self.episode_min, axis=0)

    @property
    def maximum(self) -> np.ndarray:
        return np.fmax.reduce(self.episode_max, axis=0)

    @property
    def mean(self) -> np.ndarray:
        return self.episode_sum.sum(axis=0) / np.maximum(self.finite_count, 1)


@dataclass
class DatasetFiles:
    root: Path
    info: dict[str, Any]
    episodes: dict[str, np.ndarray] | None  # meta/episodes columns (sorted by episode_index), None if unreadable
    episodes_problem: str = ""
    episode_tasks: list[list[str]] | None = None  # the `tasks` list column of meta/episodes
    video_columns: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # key -> column -> values
    tasks: dict[int, str] | None = None  # task_index -> instruction; None if missing/unreadable
    tasks_problem: str = ""
    stats: dict[str, Any] | None = None
    stats_problem: str = ""
    frames: Frames | None = None
    unreadable: dict[str, str] = field(default_factory=dict)  # relative path -> error


def read_dataset(
    root: Path, info: dict[str, Any], vector_keys: list[str], progress: Progress | None = None
) -> DatasetFiles:
    files = DatasetFiles(root=root, info=info, episodes=None)
    _read_episodes(files)
    _read_tasks(files)
    _read_stats(files)
    files.frames = _read_frames(files, vector_keys, progress)
    return files


def rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _read_episodes(files: DatasetFiles) -> None:
    paths = sorted(files.root.glob(EPISODES_GLOB))
    if not paths:
        files.episodes_problem = "meta/episodes/ holds no parquet file"
        return
    tables = []
    for path in paths:
        try:
            schema = pq.read_schema(path)
            wanted = [c for c in schema.names if not c.startswith("stats/")]  # skip the heavy stats columns
            tables.append(pq.read_table(path, columns=wanted))
        except (pa.ArrowException, OSError) as exc:
            files.unreadable[rel(files.root, path)] = _short(exc)
    if not tables:
        files.episodes_problem = "no meta/episodes file could be read"
        return
    try:
        table = pa.concat_tables(tables, promote_options="default")
    except pa.ArrowException as exc:
        files.episodes_problem = f"meta/episodes files disagree on their columns: {_short(exc)}"
        return
    missing = [c for c in EPISODE_COLUMNS if c not in table.column_names]
    if missing:
        files.episodes_problem = f"meta/episodes lacks column(s) {', '.join(missing)}"
        return
    order = np.argsort(table["episode_index"].to_numpy(), kind="stable")
    table = table.take(pa.array(order))
    files.episodes = {c: table[c].to_numpy() for c in EPISODE_COLUMNS}
    if "tasks" in table.column_names:
        files.episode_tasks = table["tasks"].to_pylist()
    for name in table.column_names:
        if name.startswith("videos/"):
            key, _, column = name[len("videos/") :].rpartition("/")
            files.video_columns.setdefault(key, {})[column] = table[name].to_numpy(zero_copy_only=False)


def _read_tasks(files: DatasetFiles) -> None:
    path = files.root / "meta" / "tasks.parquet"
    if not path.is_file():
        files.tasks_problem = "meta/tasks.parquet is missing"
        return
    try:
        files.tasks = load_tasks(path)
    except (pa.ArrowException, OSError) as exc:
        files.unreadable["meta/tasks.parquet"] = _short(exc)
        files.tasks_problem = "meta/tasks.parquet cannot be read"
    except ValueError as exc:
        files.tasks_problem = str(exc)


def load_tasks(path: Path) -> dict[int, str]:
    """task_index -> instruction from a tasks.parquet; ValueError when its columns are not those."""
    table = pq.read_table(path)
    # LeRobot writes the instruction as the pandas index ("task" or "__index_level_0__").
    text_column = next((c for c in ("task", "__index_level_0__") if c in table.column_names), None)
    if "task_index" not in table.column_names or text_column is None:
        raise ValueError(f"meta/tasks.parquet has columns {table.column_names}, not task_index and task")
    return dict(zip(table["task_index"].to_pylist(), table[text_column].to_pylist(), strict=True))


def _read_stats(files: DatasetFiles) -> None:
    path = files.root / "meta" / "stats.json"
    if not path.is_file():
        files.stats_problem = "meta/stats.json is missing"
        return
    try:
        files.stats = read_json(path)
    except JsonFileError as exc:
        files.stats_problem = f"meta/stats.json is malformed: {exc.reason}"


def _read_frames(files: DatasetFiles, vector_keys: list[str], progress: Progress | None) -> Frames | None:
    columns: dict[str, list[np.ndarray]] = {c: [] for c in FRAME_COLUMNS}
    vectors: dict[str, list[np.ndarray]] = {k: [] for k in vector_keys}
    problems: dict[str, str] = {}
    file_ids: list[np.ndarray] = []
    read_paths: list[Path] = []
    missing: set[str] = set()
    common: set[str] | None = None
    for part in _read_parts(files, [*FRAME_COLUMNS, *vector_keys], progress):
        names = set(part.table.column_names)
        missing.update(c for c in (*FRAME_COLUMNS, *vector_keys) if c not in part.names)
        common = set(part.names) if common is None else common & set(part.names)
        for name in FRAME_COLUMNS:
            if name in names:
                columns[name].append(part.table[name].to_numpy())
        for key in vector_keys:
            if key in names and key not in problems:
                array, problem = _vector_column(part.table[key])
                if array is None:
                    problems[key] = f"{', '.join(rel(files.root, p) for p in part.paths)}: {problem}"
                else:
                    vectors[key].append(array)
        file_ids.append(
            np.repeat(np.arange(len(read_paths), len(read_paths) + len(part.paths), dtype=np.int32), part.rows)
        )
        read_paths.extend(part.paths)
    parts_read = len(file_ids)
    if not read_paths or "episode_index" in missing:
        return None

    episode = np.concatenate(columns["episode_index"]).astype(np.int64, copy=False)
    order = None if np.all(episode[1:] >= episode[:-1]) else np.argsort(episode, kind="stable")

    def ordered(array: np.ndarray) -> np.ndarray:
        return array if order is None else array[order]

    def joined(parts: list[np.ndarray], dtype: type[np.generic] | None = None) -> np.ndarray | None:
        if len(parts) != parts_read:  # the column is absent from some file
            return None
        array = np.concatenate(parts)
        return ordered(array if dtype is None else array.astype(dtype, copy=False))

    frames = Frames(
        episode=episode if order is None else episode[order],
        frame=_or_empty(joined(columns["frame_index"], np.int64), len(episode)),
        timestamp=_or_empty(joined(columns["timestamp"], np.float64), len(episode), np.float64),
        index=joined(columns["index"], np.int64),
        task=joined(columns["task_index"], np.int64),
        file_id=ordered(np.concatenate(file_ids)),  # int32 already, one part per read
        files=read_paths,
        missing_columns=sorted(missing),
        columns=common or set(),
        vector_problems=problems,
    )
    for key, parts in vectors.items():
        if key not in problems and (array := joined(parts)) is not None:
            frames.vectors[key] = array  # kept in the stored dtype: float32 stays float32
    return frames


@dataclass
class _Part:
    """Rows of one or more consecutive data files that share a schema, read together."""

    paths: list[Path]
    rows: list[int]  # rows per file
    names: list[str]  # every column the files have (not only those read)
    table: pa.Table


def _read_parts(
    files: DatasetFiles, wanted: list[str], progress: Progress | None, files_per_read: int = 16
) -> list[_Part]:
    """Read ``wanted`` columns of every data file; batches of same-schema files are read in one
    pyarrow call (much faster than file by file), and a batch that fails is retried file by file
    so each damaged file is named in ``files.unreadable``."""
    footers = []
    paths = sorted(files.root.glob(DATA_GLOB))
    for path in paths:
        try:
            metadata = pq.read_metadata(path)
            footers.append((path, metadata.num_rows, metadata.schema.to_arrow_schema().names))
        except (pa.ArrowException, OSError) as exc:
            files.unreadable[rel(files.root, path)] = _short(exc)
    batches: list[list[tuple[Path, int, list[str]]]] = []
    for footer in footers:
        if batches and len(batches[-1]) < files_per_read and batches[-1][-1][2] == footer[2]:
            batches[-1].append(footer)
        else:
            batches.append([footer])
    parts, done = [], 0
    for batch in batches:
        parts.extend(_read_batch(files, batch, wanted))
        done += len(batch)
        if progress:
            progress("reading data files", done, len(footers))
    return parts


def _read_batch(files: DatasetFiles, batch: list[tuple[Path, int, list[str]]], wanted: list[str]) -> list[_Part]:
    names = batch[0][2]
    columns = [c for c in wanted if c in names]
    try:
        table = pq.read_table([str(p) for p, _, _ in batch] if len(batch) > 1 else batch[0][0], columns=columns)
        if table.num_rows == sum(rows for _, rows, _ in batch):
            return [_Part([p for p, _, _ in batch], [rows for _, rows, _ in batch], names, table)]
    except (pa.ArrowException, OSError) as exc:
        if len(batch) == 1:
            files.unreadable[rel(files.root, batch[0][0])] = _short(exc)
            return []
    return [part for footer in batch for part in _read_batch(files, [footer], wanted)]


def _or_empty(array: np.ndarray | None, rows: int, dtype: type[np.generic] = np.int64) -> np.ndarray:
    """A missing column reads as all -1 (never a valid frame index or timestamp)."""
    return array if array is not None else np.full(rows, -1, dtype=dtype)


def _vector_column(column: pa.ChunkedArray) -> tuple[np.ndarray | None, str]:
    """An (n, d) float array from a list column, or why it is not one."""
    array = column.combine_chunks()
    if pa.types.is_fixed_size_list(array.type):
        width = array.type.list_size
    elif pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        lengths = np.unique(array.value_lengths().to_numpy(zero_copy_only=False))
        if len(lengths) != 1:
            return None, f"rows have {len(lengths)} different lengths ({', '.join(map(str, lengths[:5]))})"
        width = int(lengths[0])
    elif pa.types.is_floating(array.type) or pa.types.is_integer(array.type):
        return array.to_numpy(zero_copy_only=False).reshape(-1, 1), ""
    else:
        return None, f"type {array.type} is not a list of numbers"
    if array.null_count:
        return None, f"{array.null_count} row(s) are null"
    values = array.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(-1, width), ""


def disk_size(root: Path) -> int:
    """Bytes of the files under ``root``. A symlinked file counts as its target, once: a Hub
    snapshot is symlinks into the cache's blobs. Symlinked directories are not entered."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=True):
                    stat = entry.stat(follow_symlinks=True)
                    if (stat.st_dev, stat.st_ino) not in seen:
                        seen.add((stat.st_dev, stat.st_ino))
                        total += stat.st_size
    return total


def short_ranges(values: Iterable[SupportsInt], shown: int = 8) -> str:
    """'0-3, 7, 9' for [0, 1, 2, 3, 7, 9]; long lists end in '... (N in all)'."""
    numbers = sorted({int(v) for v in values})
    parts: list[str] = []
    start: int | None = None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            parts.append(str(start) if start == n else f"{start}-{n}")
            start = None
    text = ", ".join(parts[:shown])
    return text + (f", ... ({len(numbers)} in all)" if len(parts) > shown else "")


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
