"""Build the SmolVLA policy and its pre/post-processors for one node's dataset.

Three starting points, all the real ``SmolVLAPolicy`` class:
- a SmolVLA checkpoint (``base``: ``lerobot/smolvla_base`` on the Hub, or a local checkpoint dir);
- ``tiny``: the tiny local backbone and a fresh action expert (CPU tests, demo, offline sim);
- ``real_geometry``: SmolVLM2-500M's layer sizes with random weights (benchmarks, no download).

Normalisation statistics live in the processors, not in the weights, and always come from the
dataset handed in here: each node normalises with its own data's stats, and they never travel.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zk0cli.core.errors import bad_input, env_not_ready, unreachable
from zk0cli.policy.backbone import SMOLVLM2_500M, TINY, ensure_tiny_backbone, write_real_geometry_backbone

if TYPE_CHECKING:
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.policies.smolvla import SmolVLAConfig, SmolVLAPolicy

DEFAULT_BASE = "lerobot/smolvla_base"
DEFAULT_VLM = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"
DEVICES = ("auto", "cuda", "mps", "cpu")
OFFLINE_HINT = "pass a local checkpoint dir as base and a local VLM dir as vlm, or use the tiny backbone (tiny=true)"
_HUB_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_HUB_REF = re.compile(rf"^(?P<repo>{_HUB_NAME}/{_HUB_NAME})@(?P<rev>[^\s@]+)$")
# A VLM pinned to a revision is fetched without its weights: they come from the base checkpoint.
VLM_WEIGHT_FILES = ["*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.gguf"]


def parse_hub_ref(text: str, *, key: str) -> tuple[str, str | None]:
    """``org/name@rev`` -> (``org/name``, ``rev``); anything without ``@`` (a Hub id, a
    directory) -> (text, None). An existing directory is taken as it is, ``@`` in its name or
    not. bad_input naming run-config ``key`` for a malformed ``...@...``."""
    if "@" not in text or Path(text).expanduser().is_dir():
        return text, None
    found = _HUB_REF.match(text)
    if not found:
        raise bad_input(
            f"run-config {key} '{text}' is neither <org>/<name>@<revision> nor an existing directory",
            hint=f"for example {key}=lerobot/smolvla_base@main (a branch, tag or commit); a directory takes no @",
        )
    return found["repo"], found["rev"]


@dataclass
class PolicySpec:
    """What to build. Every field has the SmolVLA default unless said otherwise."""

    base: str | None = DEFAULT_BASE  # SmolVLA checkpoint: Hub id or local dir; None = fresh action expert
    revision: str | None = None  # the base's Hub revision (branch, tag or commit); None = main
    vlm: str | None = None  # VLM dir or Hub id; None = the base's own (SmolVLM2-500M for smolvla_base)
    vlm_revision: str | None = None  # the VLM's Hub revision; None = main
    tiny: bool = False  # tiny offline backbone + fresh expert (ignores base and vlm): CPU in seconds
    real_geometry: bool = False  # SmolVLM2-500M sizes, random weights, no download (ignores base and vlm)
    backbone_dir: Path | None = None  # where tiny/real_geometry backbones live; None = <data dir>/backbones
    chunk_size: int | None = None  # actions predicted per inference; None = the base's (SmolVLA: 50)
    n_action_steps: int | None = None  # actions executed per inference; None = chunk_size
    image_size: int | None = None  # images are resized+padded to this square; None = the backbone's
    device: str = "auto"  # "auto" = CUDA, then MPS, then CPU
    bf16_autocast: bool = True  # on CUDA when the GPU supports bf16; weights stay fp32
    init_seed: int = 0  # seeds random initialisation so every node builds identical frozen weights

    def __post_init__(self) -> None:
        if self.tiny and self.real_geometry:
            raise bad_input("tiny and real_geometry exclude each other", hint="choose one of them")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise bad_input(f"unknown device '{self.device}'", hint=f"use one of {', '.join(DEVICES)}")
        for key in ("chunk_size", "n_action_steps", "image_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise bad_input(f"policy {key} must be >= 1, got {value}", hint=f"fix {key}")
        for name, revision in ((self.base, self.revision), (self.vlm, self.vlm_revision)):
            if revision is not None and not _is_hub_id(name):
                raise bad_input(
                    f"revision '{revision}' given for {name or 'nothing'}, which is not a Hub id",
                    hint="a revision (@branch, @tag or @commit) goes with an <org>/<name> on the Hub, not a directory",
                )


@dataclass
class BuiltPolicy:
    """A policy ready to train or evaluate on one dataset, with what is needed to feed it."""

    policy: SmolVLAPolicy
    preprocessor: Any  # lerobot PolicyProcessorPipeline: raw batch -> normalised, tokenised, on device
    postprocessor: Any  # lerobot PolicyProcessorPipeline: normalised action -> dataset units, on CPU
    device: torch.device
    autocast_dtype: torch.dtype | None  # torch.bfloat16 on CUDA with bf16 support, else None
    spec: PolicySpec = field(repr=False)

    @property
    def config(self) -> SmolVLAConfig:
        return self.policy.config

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for forward passes: bf16 autocast where supported, else nothing."""
        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def delta_timestamps(self, meta: LeRobotDatasetMetadata) -> dict[str, list[float]]:
        """What LeRobotDataset needs to return the action chunk (and current observation)."""
        from lerobot.datasets.factory import resolve_delta_timestamps

        return resolve_delta_timestamps(self.config, meta)


def resolve_device(name: str = "auto") -> torch.device:
    """CUDA, then MPS, then CPU for "auto"; an explicit device must exist."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }[name.split(":")[0]]
    if not available:
        raise env_not_ready(
            f"device '{name}' is not available on this machine",
            hint="use device=auto or cpu; `zk0 doctor` shows what is found",
        )
    return torch.device(name)


def build_policy(spec: PolicySpec, dataset_meta: LeRobotDatasetMetadata) -> BuiltPolicy:
    """SmolVLA for ``spec``, with processors normalising by ``dataset_meta.stats``."""
    import torch
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    device = resolve_device(spec.device)
    config = _policy_config(spec, device)
    # lerobot and SmolVLA print progress to stdout; keep stdout clean for `--json` output.
    hub_errors = _hub_errors(_ref(config.pretrained_path, config.pretrained_revision), config.vlm_model_name)
    with contextlib.redirect_stdout(sys.stderr), _seeded(spec.init_seed), hub_errors:
        policy = make_policy(config, ds_meta=dataset_meta)
        preprocessor, postprocessor = make_pre_post_processors(config, dataset_stats=dataset_meta.stats)
    policy.train()  # from_pretrained returns eval mode; SmolVLA keeps its frozen VLM in eval anyway
    autocast = (
        torch.bfloat16 if spec.bf16_autocast and device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    )
    return BuiltPolicy(policy, preprocessor, postprocessor, device, autocast, spec)


def policy_features(config: SmolVLAConfig) -> dict[str, list[int]]:
    """The features a policy was built for, by name: what a dataset it runs on must provide."""
    return {name: list(feature.shape) for name, feature in {**config.input_features, **config.output_features}.items()}


def check_features(trained: dict[str, list[int]], dataset_meta: LeRobotDatasetMetadata, *, what: str) -> None:
    """bad_input unless the dataset has the cameras, state and action ``trained`` names, with the
    same state and action sizes (camera frames may differ in size: they are resized)."""
    from lerobot.utils.feature_utils import dataset_to_policy_features

    offered = {name: list(feature.shape) for name, feature in dataset_to_policy_features(dataset_meta.features).items()}
    missing = sorted(set(trained) - set(offered))
    extra = sorted(set(offered) - set(trained))
    resized = [
        f"{name} {offered[name]} vs {trained[name]}"
        for name in sorted(set(trained) & set(offered))
        if not name.startswith("observation.images.") and offered[name] != trained[name]
    ]
    if missing or extra or resized:
        detail = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing)}" if missing else "",
                f"not in the policy {', '.join(extra)}" if extra else "",
                f"sizes differ: {', '.join(resized)}" if resized else "",
            )
            if part
        )
        raise bad_input(
            f"the dataset's features do not match {what} ({detail})",
            hint="use the dataset this policy was trained on, or one recorded with the same cameras and arm",
        )


def check_sources(spec: PolicySpec) -> str:
    """Fetch, or find in the HF cache, what building ``spec`` reads from the Hub (the checkpoint's
    config, its VLM's config), as a build would: the Zk0Error a build would raise, in seconds."""
    if spec.tiny or spec.real_geometry:
        return f"{'tiny' if spec.tiny else 'real-geometry'}: built locally, nothing to download"
    import torch
    from transformers import AutoConfig

    config = _policy_config(spec, torch.device("cpu"))
    with _hub_errors(config.vlm_model_name), contextlib.redirect_stdout(sys.stderr):
        AutoConfig.from_pretrained(config.vlm_model_name)
    base = _ref(spec.base, spec.revision) if spec.base else "a fresh SmolVLA"
    return f"{base} with VLM {_ref(spec.vlm, spec.vlm_revision) if spec.vlm else config.vlm_model_name}: available"


def _policy_config(spec: PolicySpec, device: torch.device) -> SmolVLAConfig:
    from lerobot.policies.smolvla import SmolVLAConfig

    device_name = device.type if device.index is None else str(device)
    image_size = spec.image_size
    if spec.tiny or spec.real_geometry:
        geometry, write = (TINY, ensure_tiny_backbone) if spec.tiny else (SMOLVLM2_500M, write_real_geometry_backbone)
        directory = spec.backbone_dir / geometry.name if spec.backbone_dir else None
        config = SmolVLAConfig(vlm_model_name=str(write(directory)), device=device_name)
        image_size = image_size or geometry.image_size
    elif spec.base is None:
        config = SmolVLAConfig(vlm_model_name=_vlm_source(spec) or DEFAULT_VLM, device=device_name)
    else:
        config = _checkpoint_config(spec.base, spec.revision)
        config.device = device_name
        if spec.vlm:
            config.vlm_model_name = _vlm_source(spec)
    # VLM weights come from the base checkpoint (or start random): never a second download.
    config.load_vlm_weights = False
    if image_size is not None:
        config.resize_imgs_with_padding = (image_size, image_size)
    if spec.chunk_size is not None:
        config.chunk_size = spec.chunk_size
    config.n_action_steps = spec.n_action_steps or config.chunk_size
    if config.n_action_steps > config.chunk_size:
        raise bad_input(
            f"n_action_steps ({config.n_action_steps}) exceeds chunk_size ({config.chunk_size})",
            hint="lower n_action_steps or raise chunk_size",
        )
    return config


def _vlm_source(spec: PolicySpec) -> str | None:
    """What ``vlm_model_name`` is set to: the spec's VLM as given, or, pinned to a revision, that
    revision's files (config, processor, tokenizer: no weights) in the HF cache, because SmolVLA
    reads its VLM through ``from_pretrained`` calls that take no revision."""
    if not spec.vlm or spec.vlm_revision is None:
        return spec.vlm
    from huggingface_hub import snapshot_download

    with _hub_errors(_ref(spec.vlm, spec.vlm_revision)), contextlib.redirect_stdout(sys.stderr):
        return snapshot_download(spec.vlm, revision=spec.vlm_revision, ignore_patterns=VLM_WEIGHT_FILES)


def _checkpoint_config(base: str, revision: str | None = None) -> SmolVLAConfig:
    """The base checkpoint's config (at ``revision`` on the Hub), set up so make_policy loads its
    weights from ``base`` at that same revision."""
    from lerobot.configs.policies import PreTrainedConfig

    local = Path(base).expanduser()
    if not local.is_dir() and _looks_like_path(base):
        raise bad_input(
            f"no checkpoint directory at {base}",
            hint="pass an existing checkpoint dir or a Hub id like lerobot/smolvla_base",
        )
    if local.is_dir() and not (local / "config.json").is_file():
        raise bad_input(f"{base} is not a LeRobot checkpoint (no config.json)", hint="pass a SmolVLA checkpoint dir")
    source = str(local) if local.is_dir() else base
    with _hub_errors(_ref(source, revision)):
        config = PreTrainedConfig.from_pretrained(source, revision=revision)
    if config.type != "smolvla":
        raise bad_input(f"{base} is a '{config.type}' checkpoint, not SmolVLA", hint="pass a SmolVLA checkpoint")
    config.pretrained_path = source
    config.pretrained_revision = revision  # make_policy passes it to from_pretrained for the weights
    bundled = local / BUNDLED_VLM
    if local.is_dir() and bundled.is_dir() and not Path(config.vlm_model_name).is_dir():
        config.vlm_model_name = str(bundled)  # the checkpoint moved: its own copy of the VLM (save_checkpoint)
    # Features come from each node's own dataset (camera names, state size), not the checkpoint's.
    config.input_features = {}
    config.output_features = {}
    return config


def _looks_like_path(name: str) -> bool:
    """A Hub id is exactly ``owner/name``; anything else that is not a directory is a bad path."""
    return name.startswith(("/", ".", "~")) or name.count("/") != 1


def _is_hub_id(name: str | None) -> bool:
    if not name:
        return False
    return not Path(name).expanduser().exists() and not _looks_like_path(name.split("@")[0])


def _ref(name: str | None, revision: str | None) -> str | None:
    """``org/name@rev`` as people write it (the name alone without a revision)."""
    return f"{name}@{revision}" if name and revision else name


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch for the block, leaving the caller's random state as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _hub_errors(*names: str | None) -> Iterator[None]:
    """Turn a failed Hugging Face Hub fetch of one of ``names`` (``org/name[@rev]``) into one
    clear Zk0Error: exit 2 when the repository, the revision or the file is not there (LeRobot
    wraps the Hub's error in its own, so the causes are looked through), 3 when offline or
    unreachable."""
    from huggingface_hub.errors import (
        GatedRepoError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    hub_names = [str(name) for name in names if _is_hub_id(str(name) if name else None)]
    try:
        yield
    except OSError as exc:  # the Hub's errors, offline mode, no network, DNS failure, missing cached file
        if not hub_names:
            raise
        shown = " / ".join(hub_names)
        cause = _cause(exc, (RevisionNotFoundError, RepositoryNotFoundError, GatedRepoError, RemoteEntryNotFoundError))
        if isinstance(cause, RevisionNotFoundError):
            raise bad_input(
                f"{shown}: no such revision on the Hugging Face Hub",
                hint="give a branch, tag or commit the repository has, or drop @revision for its main branch",
            ) from exc
        if isinstance(cause, RepositoryNotFoundError | GatedRepoError):
            raise bad_input(
                f"{shown} is not an accessible repository on the Hugging Face Hub",
                hint="check the name, or log in with `huggingface-cli login` for a gated/private repo",
            ) from exc
        if isinstance(cause, RemoteEntryNotFoundError):
            raise bad_input(
                f"{shown}: a file it needs is not in that repository at that revision ({_entry(cause)})",
                hint="check the name and the revision (a branch, tag or commit that holds the checkpoint or VLM)",
            ) from exc
        raise unreachable(
            f"cannot fetch {' / '.join(hub_names)} from the Hugging Face Hub (offline or unreachable)",
            hint=OFFLINE_HINT,
        ) from exc


def _cause(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """``exc`` or the first exception it was raised from (or during) that is one of ``kinds``."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kinds):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _entry(error: BaseException) -> str:
    """The file a "not found" answer was about, from its URL."""
    url = str(getattr(getattr(error, "response", None), "url", "") or "")
    return url.rsplit("/", 1)[-1] or "a file"


BUNDLED_VLM = "vlm"  # a checkpoint's copy of the local VLM directory it was built on
PROCESSOR_FILE = "policy_preprocessor.json"


def save_checkpoint(built: BuiltPolicy, directory: Path, *, lives_at: Path | None = None) -> None:
    """LeRobot's save_pretrained layout (policy config + weights, both processors) in
    ``directory``, which will live at ``lives_at`` (default: where it is), made to outlive where
    it was trained: a VLM read from a local directory (zk0's offline backbones, a demo's folder)
    is copied in as ``vlm/`` and named by its path there, so removing the original directory
    does not break it, for LeRobot's own loaders too. Moved elsewhere, the checkpoint still loads
    in zk0, which falls back to its ``vlm/`` (:func:`_checkpoint_config`). A Hub VLM id is kept."""
    built.policy.save_pretrained(directory)
    built.preprocessor.save_pretrained(directory)
    built.postprocessor.save_pretrained(directory)
    vlm = Path(built.policy.config.vlm_model_name)
    if not vlm.is_dir():
        return
    shutil.copytree(vlm, directory / BUNDLED_VLM)
    bundled = str(Path(lives_at or directory).resolve() / BUNDLED_VLM)
    _rename_vlm(directory / "config.json", "vlm_model_name", str(vlm), bundled)
    _rename_vlm(directory / PROCESSOR_FILE, "tokenizer_name", str(vlm), bundled)


def _rename_vlm(path: Path, key: str, old: str, new: str) -> None:
    """Point every ``key`` holding ``old`` in a saved JSON file at ``new``."""

    def renamed(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: new if k == key and v == old else renamed(v) for k, v in node.items()}
        if isinstance(node, list):
            return [renamed(item) for item in node]
        return node

    if path.is_file():
        path.write_text(json.dumps(renamed(json.loads(path.read_text())), indent=4) + "\n")
