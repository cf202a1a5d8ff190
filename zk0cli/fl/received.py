"""What a node keeps of each run: the last global weights it received, for ``zk0 export``.

Normalisation statistics never leave a node, so a policy for this node's arm is put together on
the node: the run's base policy, the global weights kept here and the node's own dataset stats.

    <data dir>/received/<flower run id>/
        weights.safetensors   the trainable weights of the last global this node loaded (fp32)
        received.json         run id, server round, their digest, the run config, this node's dataset

One entry per run, overwritten each time a newer global arrives (both files written atomically,
weights first); the last ``KEEP_RUNS`` runs are kept. A crash between the two writes leaves a
digest that does not match: ``zk0 export`` says so and the next round repairs it.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from zk0cli.core.errors import Zk0Error, bad_input
from zk0cli.core.files import JsonFileError, atomic_write_bytes, atomic_write_json, read_json
from zk0cli.core.paths import Paths
from zk0cli.fl import integrity

WEIGHTS = "weights.safetensors"
INFO = "received.json"
KEEP_RUNS = 3  # a real SmolVLA's trainable weights are ~400 MB per run


def received_dir(paths: Paths) -> Path:
    return paths.data_dir / "received"


@dataclass(frozen=True)
class Received:
    """One run's kept global, as read back (weights checked against their digest)."""

    run_id: int
    server_round: int
    run_config: dict[str, Any]
    dataset_uri: str
    dataset_fingerprint: str
    features: dict[str, list[int]]  # the policy's input/output features as trained (name -> shape)
    sha256: str
    received_at: str
    weights: dict[str, NDArray[np.float32]]


def keep(
    paths: Paths,
    run_id: int,
    server_round: int,
    weights: Mapping[str, NDArray[np.float32]],
    *,
    sha256: str,
    run_config: Mapping[str, Any],
    dataset_uri: str,
    dataset_fingerprint: str,
    features: Mapping[str, list[int]],
) -> bool:
    """Keep ``weights`` (whose packed-record digest is ``sha256``: the node's wire has it
    already) as run ``run_id``'s global unless this exact global is kept already (a simulation's
    clients all load the same one). True when it was written."""
    from safetensors.numpy import save

    directory = received_dir(paths) / str(run_id)
    held = read_json(directory / INFO, None)
    if isinstance(held, dict) and held.get("sha256") == sha256:
        return False
    atomic_write_bytes(directory / WEIGHTS, save({name: np.ascontiguousarray(v) for name, v in weights.items()}))
    info = {
        "run_id": run_id,
        "server_round": server_round,
        "sha256": sha256,
        "names": list(weights),  # safetensors keeps no order; the digest covers it
        "dataset_uri": dataset_uri,
        "dataset_fingerprint": dataset_fingerprint,
        "features": dict(features),
        "received_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run_config": dict(run_config),
    }
    atomic_write_json(directory / INFO, info)
    _forget_old_runs(received_dir(paths), keep_dir=directory)
    return True


def _forget_old_runs(root: Path, keep_dir: Path) -> None:
    """Drop all but the ``KEEP_RUNS`` most recently received runs (never the one just written)."""

    def received_at(run: Path) -> int:
        return (run / INFO).stat().st_mtime_ns if (run / INFO).exists() else 0

    runs = sorted((p for p in root.iterdir() if p.is_dir()), key=received_at)
    for old in [p for p in runs if p != keep_dir][: max(0, len(runs) - KEEP_RUNS)]:
        shutil.rmtree(old, ignore_errors=True)


def held_runs(paths: Paths) -> list[int]:
    root = received_dir(paths)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / INFO).is_file())


def find(paths: Paths, run_ref: str) -> int:
    """The Flower run id this node holds a global for: the id itself or a unique prefix."""
    held = held_runs(paths)
    matches = [run for run in held if str(run).startswith(run_ref.strip())] if run_ref.strip() else []
    if len(matches) == 1:
        return matches[0]
    shown = ", ".join(str(run) for run in held) or "none"
    if matches:
        raise bad_input(f"'{run_ref}' matches {len(matches)} runs held here ({shown})", hint="give more of the id")
    raise bad_input(
        f"this node holds no global weights of run '{run_ref}' (it holds: {shown})",
        hint="run `zk0 export` on a node that took part in the run (by its Flower run id, as "
        "`zk0 status` shows it), or pass a checkpoint directory copied from the server",
    )


def read(paths: Paths, run_id: int) -> Received:
    from safetensors.numpy import load_file

    directory = received_dir(paths) / str(run_id)
    try:
        info = read_json(directory / INFO)
        weights = load_file(directory / WEIGHTS)
    except (JsonFileError, OSError) as exc:
        raise Zk0Error(f"the kept global of run {run_id} cannot be read: {exc}", hint="wait for a round") from None
    names = [str(name) for name in info.get("names", [])]
    ordered = {name: weights[name] for name in names if name in weights}
    if len(ordered) != len(weights) or integrity.digest(integrity.to_record(ordered)) != info.get("sha256"):
        raise Zk0Error(
            f"the kept global of run {run_id} fails its digest check (interrupted write or damaged disk)",
            hint="the node keeps the next global it receives; or export a server checkpoint directory",
        )
    return Received(
        run_id=int(info["run_id"]),
        server_round=int(info["server_round"]),
        run_config=dict(info["run_config"]),
        dataset_uri=str(info["dataset_uri"]),
        dataset_fingerprint=str(info["dataset_fingerprint"]),
        features={str(k): list(v) for k, v in info.get("features", {}).items()},
        sha256=str(info["sha256"]),
        received_at=str(info["received_at"]),
        weights=ordered,
    )
