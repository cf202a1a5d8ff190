"""What every dataset check looks at, and the small readers of info.json the checks share."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from zk0cli.datasets.layout import DatasetFiles, Frames, short_ranges
from zk0cli.datasets.spec import FederationSpec
from zk0cli.datasets.uri import DatasetUri, info_features

BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")


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
    def info(self) -> dict[str, Any]:
        return self.files.info

    @property
    def features(self) -> dict[str, Any]:
        return info_features(self.info)

    def drop_episodes_fix(self, episodes: list[int]) -> str:
        """LeRobot's own tool for removing episodes, writing a cleaned copy."""
        root = self.files.root
        return (
            f"re-record or drop episode(s) {short_ranges(episodes)}: lerobot-edit-dataset --repo_id {self.uri.repo_id} "
            f"--root {root} --new_root {root}_clean --operation.type delete_episodes "
            f'--operation.episode_indices "{episodes[:50]}"'
        )

    def joint_names(self, key: str, columns: Iterable[int]) -> list[str]:
        """The names info.json gives the ``columns`` of vector ``key``; ``#3`` where it names none."""
        feature = self.features.get(key)
        names = feature_names(feature.get("names")) if isinstance(feature, dict) else None
        return [names[c] if names and c < len(names) else f"#{c}" for c in columns]


def number(value: object) -> float | None:
    """A JSON number as a float; None for anything else (booleans included)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def feature_names(names: object) -> list[str] | None:
    """Feature names as a flat list: v3 stores a list; older exports a {"motors": [...]} dict."""
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    return list(names) if isinstance(names, list) else None
