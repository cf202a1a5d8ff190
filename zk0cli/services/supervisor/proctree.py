"""The processes zk0 starts: their one environment, and how their trees are stopped."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def child_env(flwr_home: Path | str | None = None, **extra: str) -> dict[str, str]:
    """The environment of every process zk0 starts (supervised services, the simulation SuperLink,
    flwr CLI calls): the venv's bin/ first on PATH, zk0's own FLWR_HOME, no Flower telemetry or
    update check, unbuffered Python output (its lines reach the logs as they happen), no colour codes."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1", PYTHONUNBUFFERED="1", NO_COLOR="1")
    if flwr_home:
        env["FLWR_HOME"] = str(flwr_home)
    env.update(extra)
    return env
