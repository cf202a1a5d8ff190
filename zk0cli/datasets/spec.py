"""Federation specs: what a federation accepts (features, cameras, fps), as data in TOML files.

Built-in specs live in ``specs/<name>.toml`` next to this module; any other TOML file with the
same keys can be passed by path.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from zk0cli.core.errors import bad_input

SPECS_DIR = Path(__file__).with_name("specs")


@dataclass(frozen=True)
class FeatureSpec:
    dtype: str
    shape: tuple[int, ...]
    names: tuple[str, ...] | None = None  # None: any names


@dataclass(frozen=True)
class FederationSpec:
    name: str
    features: dict[str, FeatureSpec]  # required non-camera features
    description: str = ""
    fps: int | None = None  # None: any fps
    robot_types: tuple[str, ...] = ()  # empty: any robot type
    min_cameras: int = 1
    camera_prefix: str = "observation.images."
    camera_dtypes: tuple[str, ...] = ("video", "image")
    source: str = field(default="", compare=False)  # the file it came from


def builtin_specs() -> list[str]:
    return sorted(p.stem for p in SPECS_DIR.glob("*.toml"))


def load_spec(name_or_path: str) -> FederationSpec:
    """A built-in spec by name (e.g. ``so100``) or a spec TOML file by path."""
    path = SPECS_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise bad_input(
            f"no federation spec named {name_or_path!r}",
            hint=f"use one of: {', '.join(builtin_specs())}, or the path to a spec .toml file",
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        return _from_dict(raw, source=str(path))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise bad_input(
            f"malformed federation spec {path}: {type(exc).__name__}: {exc}",
            hint=f"compare it with {SPECS_DIR / 'so100.toml'}",
        ) from exc


def _from_dict(raw: dict, *, source: str) -> FederationSpec:
    features = {
        key: FeatureSpec(
            dtype=str(value["dtype"]),
            shape=tuple(int(n) for n in value["shape"]),
            names=tuple(value["names"]) if value.get("names") is not None else None,
        )
        for key, value in raw.get("features", {}).items()
    }
    return FederationSpec(
        name=str(raw["name"]),
        features=features,
        description=str(raw.get("description", "")),
        fps=int(raw["fps"]) if raw.get("fps") is not None else None,
        robot_types=tuple(raw.get("robot_types", ())),
        min_cameras=int(raw.get("min_cameras", 1)),
        camera_prefix=str(raw.get("camera_prefix", "observation.images.")),
        camera_dtypes=tuple(raw.get("camera_dtypes", ("video", "image"))),
        source=source,
    )
