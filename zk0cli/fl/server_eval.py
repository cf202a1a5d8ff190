"""Server-side evaluation on held-out datasets, checkpoints and evaluation videos.

The server builds the same policy as the nodes once per held-out dataset (each with that
dataset's normalisation statistics), loads the global trainable weights into it and measures,
deterministically (fixed flow-matching noise and time, fixed frames): the policy loss and the
action error of ``select_action`` against the recorded actions. The composite is the plain mean
over datasets, so each held-out dataset counts the same whatever its size.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from zk0cli.core.errors import bad_input
from zk0cli.fl.run_config import RunConfig

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from zk0cli.fl.node_features import FeaturesOnlyMeta
    from zk0cli.policy.build import BuiltPolicy

log = logging.getLogger("zk0.server")


@dataclass
class EvalTarget:
    name: str
    uri: str
    built: BuiltPolicy
    dataset: LeRobotDataset
    fingerprint: str


class ServerEvaluator:
    """Evaluates on the held-out datasets; with none (``features_from_nodes``), builds the policy
    from the nodes' features alone and evaluates nothing: rounds are judged by the nodes."""

    def __init__(self, config: RunConfig, features_from_nodes: FeaturesOnlyMeta | None = None):
        from zk0cli.policy.build import build_policy

        self.config = config
        self.targets: list[EvalTarget] = []
        if config.eval_dataset_uris():
            self.targets = [_target(uri, config, heldout_only=False) for uri in config.eval_dataset_uris()]
        elif config.dataset_uris() and config.client_eval_episodes > 0:
            # simulation without eval datasets: the clients' held-out episodes, which no client trains on
            self.targets = [_target(uri, config, heldout_only=True) for uri in dict.fromkeys(config.dataset_uris())]
        if self.targets:
            self.built = self.targets[0].built
        elif features_from_nodes is not None:
            self.built = build_policy(config.policy_spec(), features_from_nodes)
        else:
            raise bad_input(
                "the server has neither held-out data nor the nodes' features to build the policy on",
                hint="give it held-out data: --set eval-datasets='local:/path/to/heldout'",
            )

    @property
    def evaluates(self) -> bool:
        return bool(self.targets)

    def fingerprints(self) -> dict[str, str]:
        return {t.uri: t.fingerprint for t in self.targets}

    def initial_weights(self) -> dict[str, NDArray[np.float32]]:
        from zk0cli.policy.trainable import get_trainable

        return {name: t.numpy() for name, t in get_trainable(self.built.policy).items()}

    def checkpoint_weights(self, directory: Path) -> dict[str, NDArray[np.float32]]:
        """The trainable weights a round checkpoint holds (what a resumed run starts from)."""
        from zk0cli.policy.trainable import read_checkpoint_trainable

        return {name: t.numpy() for name, t in read_checkpoint_trainable(self.built.policy, directory).items()}

    def __call__(self, server_round: int, weights: Mapping[str, NDArray[np.float32]]) -> dict[str, Any] | None:
        from zk0cli.policy.train import evaluate

        if not self.targets:
            return None

        per_dataset = {}
        for target in self.targets:
            _load(target.built, weights)
            result = evaluate(
                target.built,
                target.dataset,
                seed=self.config.seed,
                max_batches=self.config.eval_batches,
                batch_size=self.config.batch_size,
            )
            per_dataset[target.name] = {
                "policy_loss": float(result["policy_loss"]),
                "action_error": float(result["action_mae"]),
                "samples": int(result["samples"]),
            }
        composite = {
            key: statistics.fmean(m[key] for m in per_dataset.values()) for key in ("policy_loss", "action_error")
        }
        log.info(
            "round %d server eval: loss %.4f, action error %.4f",
            server_round,
            composite["policy_loss"],
            composite["action_error"],
        )
        return {"datasets": per_dataset, "composite": composite}

    def save_checkpoint(
        self, directory: Path, weights: Mapping[str, NDArray[np.float32]], *, lives_at: Path | None = None
    ) -> None:
        """LeRobot's save_pretrained layout: policy config + weights and both processors (which
        hold the first held-out dataset's statistics, or none when the server has no data)."""
        from zk0cli.policy.build import save_checkpoint

        _load(self.built, weights)
        save_checkpoint(self.built, directory, lives_at=lives_at)

    def write_video(self, path: Path, weights: Mapping[str, NDArray[np.float32]], server_round: int) -> dict[str, Any]:
        """The first held-out episode of the first eval dataset (the same one every round, so they compare)."""
        from zk0cli.fl.video import EpisodeTrajectories, write_video
        from zk0cli.policy.train import predict_episode

        target = self.targets[0]
        _load(target.built, weights)
        episode = int(target.dataset.episodes[0]) if target.dataset.episodes else 0
        actions = predict_episode(target.built, target.dataset, episode, seed=self.config.seed)
        camera = target.dataset.meta.camera_keys[0]
        frames = np.stack([_to_uint8_image(target.dataset[i][camera]) for i in actions.frame_indices])
        return write_video(
            path,
            EpisodeTrajectories(
                frames=frames,
                predicted=actions.predicted,
                recorded=actions.recorded,
                joint_names=actions.action_names,
                fps=actions.fps,
                dataset=target.name,
                episode=episode,
            ),
            server_round,
        )


def _target(uri_text: str, config: RunConfig, *, heldout_only: bool) -> EvalTarget:
    from zk0cli.datasets.partition import open_partition
    from zk0cli.datasets.uri import dataset_fingerprint, open_dataset, open_metadata, parse_uri
    from zk0cli.policy.build import build_policy

    uri = parse_uri(uri_text)
    meta = open_metadata(uri)
    if not meta.camera_keys:
        raise bad_input(f"held-out dataset {uri} has no camera", hint="SmolVLA needs at least one camera feature")
    built = build_policy(config.policy_spec(), meta)
    delta = built.delta_timestamps(meta)
    if heldout_only:
        dataset = open_partition(uri, heldout=config.client_eval_episodes, split="heldout", delta_timestamps=delta)
        name = f"{uri.name}-heldout"
    else:
        dataset, name = open_dataset(uri, delta_timestamps=delta), uri.name
    return EvalTarget(name, str(uri), built, dataset, dataset_fingerprint(uri))


def _load(built: BuiltPolicy, weights: Mapping[str, NDArray[np.float32]]) -> None:
    import torch

    from zk0cli.policy.trainable import set_trainable

    set_trainable(built.policy, {name: torch.from_numpy(np.asarray(value)) for name, value in weights.items()})


def _to_uint8_image(image: Any) -> NDArray[Any]:  # a torch tensor, or anything np.asarray takes
    """A dataset camera frame (C, H, W float in [0, 1], maybe with leading time dims) as H, W, 3 uint8."""
    array = image.numpy() if hasattr(image, "numpy") else np.asarray(image)
    array = array.reshape(array.shape[-3:])
    if array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.dtype != np.uint8:
        array = np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return array
