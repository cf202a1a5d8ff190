"""`zk0 export`: a LeRobot policy directory for this node's arm, from a federated run.

The global weights carry no normalisation statistics (they never leave a node), so the export
runs on the node and combines three things:
- the run's base policy (the run config's ``policy``: tiny, a checkpoint dir or a Hub id), or a
  checkpoint directory copied from the server (``RUN`` given as a path);
- the global weights: the last ones this node received in that run (:mod:`zk0cli.fl.received`,
  digest checked), or the checkpoint's own;
- the pre/post-processors built from this node's dataset, so actions come out in its units.

The result loads with LeRobot's own ``SmolVLAPolicy.from_pretrained(DIR)`` and
``make_pre_post_processors(config, pretrained_path=DIR)``, as ``lerobot-rollout --policy.path=DIR``
does. It is written to a temporary directory beside ``DIR`` and renamed: nothing half-written.

A global older than the run's last round (a node gets round N's result only through federated
evaluation, off with ``fraction-evaluate=0``, or a later round; a run record that stopped early)
is exported as what it is, and the output and the model card say so (``older_than_run``).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zk0cli.core.errors import Zk0Error, bad_input
from zk0cli.core.files import JsonFileError, atomic_write_json, atomic_write_text, read_json
from zk0cli.core.paths import Paths

PROVENANCE = "zk0_export.json"
CARD = "README.md"


@dataclass(frozen=True)
class ExportRequest:
    run: str  # a Flower run id (or prefix) this node holds, a checkpoint dir, or a run record dir
    out_dir: Path
    dataset: str | None = None  # whose stats normalise; None = the dataset this node trained on
    server_round: int | None = None  # None = the last global held (or the record's final checkpoint)
    force: bool = False  # replace an existing non-empty out_dir


@dataclass
class Source:
    """Where the policy's weights come from, said in the model card."""

    kind: str  # "received" | "checkpoint"
    label: str  # run id or checkpoint path
    server_round: int | None
    run_config: dict[str, Any]
    base: str | None = None  # checkpoint directory the whole policy is read from
    weights: dict[str, Any] | None = None  # trainable weights to load over the built policy
    sha256: str = ""
    dataset: str | None = None  # the node's own dataset, when the source knows it
    run_datasets: dict[str, str] = field(default_factory=dict)  # URI -> fingerprint, when known
    features: dict[str, list[int]] = field(default_factory=dict)  # the policy's, as trained


def export_policy(paths: Paths, request: ExportRequest) -> dict[str, Any]:
    """Write the policy directory; returns what the command prints."""
    _check_out_dir(request.out_dir, request.force)
    source = _resolve_source(paths, request)
    dataset = request.dataset or source.dataset
    if dataset is None:
        raise bad_input(
            f"{source.label} does not say which dataset normalises the policy",
            hint="pass --dataset with this node's dataset URI (its stats set the action units)",
        )
    built, fingerprint, cameras = _build(source, dataset)
    older = None if request.server_round is not None else older_than_run(source)
    parent = request.out_dir.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{request.out_dir.name}.", suffix=".tmp"))
    try:
        from zk0cli.policy.build import save_checkpoint

        save_checkpoint(built, tmp, lives_at=request.out_dir.absolute())
        provenance = _provenance(source, dataset, fingerprint, cameras, older)
        atomic_write_json(tmp / PROVENANCE, provenance)
        atomic_write_text(tmp / CARD, model_card(provenance, request.out_dir.absolute()))
        if request.out_dir.exists():
            shutil.rmtree(request.out_dir)
        tmp.rename(request.out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**provenance, "out_dir": str(request.out_dir.absolute())}


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise bad_input(f"{out_dir} is a file, not a directory", hint="give -o a directory path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise bad_input(f"{out_dir} exists and is not empty", hint="choose another -o, or add --force to replace it")


def _resolve_source(paths: Paths, request: ExportRequest) -> Source:
    directory = Path(request.run).expanduser()
    if directory.is_dir():
        return _from_directory(directory, request.server_round)
    from zk0cli.fl import received
    from zk0cli.fl.records import find_record

    try:
        run_id = received.find(paths, request.run)
    except Zk0Error as not_held:
        try:  # a run record on this machine: the server's own, or one copied to its runs dir
            record = find_record(paths.runs_dir, request.run)
        except Zk0Error:
            raise not_held from None  # its hint is the one for a node
        return _from_directory(record, request.server_round)
    held = received.read(paths, run_id)
    if request.server_round is not None and request.server_round != held.server_round:
        raise bad_input(
            f"this node holds run {held.run_id}'s global of round {held.server_round}, not {request.server_round}",
            hint=f"drop --round, or copy the server's checkpoints/round_{request.server_round:04d} here as RUN",
        )
    return Source(
        kind="received",
        label=f"run {held.run_id}",
        server_round=held.server_round,
        run_config=held.run_config,
        weights=held.weights,
        sha256=held.sha256,
        dataset=held.dataset_uri,
        run_datasets={held.dataset_uri: held.dataset_fingerprint},
        features=held.features,
    )


def _from_directory(directory: Path, server_round: int | None) -> Source:
    """A checkpoint dir (``config.json``), or a run record dir whose checkpoint of ``server_round``
    (default: the final one) is used."""
    record: dict[str, Any] = {}
    if (directory / "checkpoints").is_dir():
        with contextlib.suppress(JsonFileError):
            record = read_json(directory / "config.json")
        checkpoint = directory / "checkpoints" / f"round_{server_round:04d}" if server_round else directory / "final"
        if not checkpoint.is_dir():
            kept = ", ".join(p.name for p in sorted((directory / "checkpoints").glob("round_*"))) or "none"
            raise bad_input(
                f"run record {directory.name} has no checkpoint "
                f"{'of round ' + str(server_round) if server_round else 'final'} (it has: {kept})",
                hint="pick a kept round with --round N; checkpoint-interval sets how often a run writes one",
            )
        directory = checkpoint.resolve()
    elif not (directory / "config.json").is_file():
        raise bad_input(
            f"{directory} is neither a checkpoint (no config.json) nor a run record (no checkpoints/)",
            hint="pass a server checkpoint directory, a run record, or a Flower run id this node took part in",
        )
    found = re.fullmatch(r"round_(\d+)", directory.name)
    checkpoint_round = int(found.group(1)) if found else None
    if server_round is not None and checkpoint_round not in (None, server_round):
        raise bad_input(
            f"{directory} is the checkpoint of round {checkpoint_round}, not {server_round}",
            hint="drop --round, or pass the run record directory to choose among its rounds",
        )
    return Source(
        kind="checkpoint",
        label=str(directory),
        server_round=checkpoint_round,
        run_config=dict(record.get("run_config", {})),
        base=str(directory),
        run_datasets=dict(record.get("dataset_fingerprints", {})),
        features=_checkpoint_features(directory),
    )


def _checkpoint_features(directory: Path) -> dict[str, list[int]]:
    try:
        config = read_json(directory / "config.json")
    except JsonFileError as exc:
        raise bad_input(f"{directory}: {exc.reason}", hint="pass an intact checkpoint directory") from None
    features = {**config.get("input_features", {}), **config.get("output_features", {})}
    return {name: list(feature.get("shape", [])) for name, feature in features.items()}


def _build(source: Source, dataset: str) -> tuple[Any, str, list[str]]:
    """The policy on CPU, processors from ``dataset``'s stats, the source's weights loaded."""
    from zk0cli.datasets.uri import dataset_fingerprint, open_metadata, parse_uri
    from zk0cli.fl.run_config import RunConfig
    from zk0cli.policy.build import PolicySpec, build_policy, check_features

    uri = parse_uri(dataset)
    meta = open_metadata(uri)
    check_features(source.features, meta, what=f"the policy of {source.label}")
    if source.base is not None:
        spec = PolicySpec(base=source.base, device="cpu")
    else:
        spec = RunConfig.from_mapping(source.run_config).policy_spec()
        spec.device = "cpu"  # an export is a file; the robot's computer picks its device (--policy.device)
    built = build_policy(spec, meta)
    if source.weights is not None:
        import torch

        from zk0cli.policy.trainable import set_trainable

        set_trainable(built.policy, {name: torch.from_numpy(v) for name, v in source.weights.items()})
    built.policy.eval()
    cameras = [key.removeprefix("observation.images.") for key in meta.camera_keys]
    return built, dataset_fingerprint(uri), cameras


def older_than_run(source: Source) -> str | None:
    """Why the round exported is not the run's last, when it is not (None otherwise or unknown)."""
    planned = source.run_config.get("num-server-rounds")
    held = source.server_round
    if not isinstance(planned, int) or held is None or held >= planned:
        return None
    if source.kind == "checkpoint":
        return (
            f"round {held} is this record's last checkpoint, but the run was set for {planned} rounds (it ended early)"
        )
    why = (
        "with fraction-evaluate 0 a node never receives the last round's result"
        if source.run_config.get("fraction-evaluate") == 0
        else "this node did not receive the later globals (not sampled, offline, or the run is not over)"
    )
    return (
        f"round {held} is the last global this node received, but the run was set for {planned} rounds: {why}; "
        f"for round {planned}, copy the server's run record (or its final/ checkpoint) here and export that"
    )


def _provenance(
    source: Source, dataset: str, fingerprint: str, cameras: list[str], older: str | None
) -> dict[str, Any]:
    from zk0cli.core.versions import package_versions

    return {
        "source": source.kind,
        "from": source.label,
        "server_round": source.server_round,
        "run_rounds": source.run_config.get("num-server-rounds"),
        "older_than_run": older,
        "global_sha256": source.sha256 or None,
        "base_policy": source.base or source.run_config.get("policy"),
        "normalised_by": {"dataset": dataset, "fingerprint": fingerprint},
        "cameras": cameras,
        "run_datasets": source.run_datasets,
        "versions": package_versions(("lerobot", "flwr", "torch")),  # zk0's own comes first
    }


def model_card(provenance: dict[str, Any], out_dir: Path) -> str:
    """The README.md the Hub and people read: where the weights came from, how to run them."""
    norm = provenance["normalised_by"]
    versions = ", ".join(f"{name} {version or '-'}" for name, version in provenance["versions"].items())
    datasets = "\n".join(f"| {uri} | `{fp[:16]}` |" for uri, fp in provenance["run_datasets"].items())
    round_text = provenance["server_round"] if provenance["server_round"] is not None else "unknown"
    if provenance["run_rounds"] is not None:
        round_text = f"{round_text} of {provenance['run_rounds']}"
    older = (
        f"\n> **Not the run's last round.** {provenance['older_than_run']}.\n" if provenance["older_than_run"] else ""
    )
    camera = "{type: opencv, index_or_path: %d, width: 640, height: 480, fps: 30}"
    cameras = ", ".join(f"{name}: {camera % index}" for index, name in enumerate(provenance["cameras"]))
    return f"""---
library_name: lerobot
pipeline_tag: robotics
tags: [smolvla, lerobot, robotics, federated-learning, zk0]
---

# SmolVLA policy from a zk0 federation

Global weights of {provenance["from"]}, round {round_text}, exported by zk0 on the node that
owns `{norm["dataset"]}`. Its normalisation statistics are that dataset's (fingerprint
`{norm["fingerprint"][:16]}`): actions come out in that arm's units. They never left the node.
{older}
| source | {provenance["source"]} |
|---|---|
| global weights sha256 | `{(provenance["global_sha256"] or "the checkpoint's own")[:16]}` |
| base policy | {provenance["base_policy"] or "-"} |
| versions | {versions} |

Datasets this node knows took part, by fingerprint:

| dataset | fingerprint |
|---|---|
{datasets or "| - | - |"}

## Drive the arm

```
lerobot-rollout --strategy.type=base --inference.type=rtc \\
  --policy.path={out_dir} --policy.device=cuda \\
  --robot.type=so101_follower --robot.port=/dev/ttyACM0 \\
  --robot.cameras="{{{cameras}}}" \\
  --task="<the task>" --duration=60
```

The camera names are the ones `{norm["dataset"]}` was recorded with; set each camera's
`index_or_path`, size and fps to your rig's. `--policy.device=cpu` works without a GPU, slowly.
"""
