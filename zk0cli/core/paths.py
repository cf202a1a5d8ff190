"""Where zk0 keeps its files. ``ZK0_HOME`` moves all of them under one root."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

APP_NAME = "zk0"


@dataclass(frozen=True)
class Paths:
    """Every directory zk0 writes to, resolved once."""

    config_dir: Path  # config.toml
    data_dir: Path  # datasets made by zk0, backbones, run records, SuperLink database
    state_dir: Path  # service state files, locks, per-service FLWR_HOME
    log_dir: Path  # supervised process logs

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def pki_dir(self) -> Path:
        """Certificates and keys made by ``zk0 init``."""
        return self.config_dir / "pki"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def quarantine_file(self) -> Path:
        """Nodes the server leaves out of sampling (``quarantine-after``), until released."""
        return self.data_dir / "quarantine.json"

    @property
    def node_names_file(self) -> Path:
        """Registered nodes (Flower node id -> name, public key), kept by ``zk0 server nodes add``."""
        return self.data_dir / "server-nodes.json"

    def all_dirs(self) -> tuple[Path, ...]:
        return (self.config_dir, self.data_dir, self.state_dir, self.log_dir)

    def to_json(self) -> str:
        return json.dumps({name: str(value) for name, value in asdict(self).items()})

    @classmethod
    def from_json(cls, text: str) -> Paths:
        return cls(**{name: Path(value) for name, value in json.loads(text).items()})

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None = None) -> Paths:
        home = home if home is not None else os.environ.get("ZK0_HOME")
        if home:
            root = Path(home).expanduser().absolute()
            return cls(root / "config", root / "data", root / "state", root / "state" / "logs")
        import platformdirs

        dirs = platformdirs.PlatformDirs(APP_NAME, appauthor=False)
        return cls(
            Path(dirs.user_config_dir),
            Path(dirs.user_data_dir),
            Path(dirs.user_state_dir),
            Path(dirs.user_log_dir),
        )
