"""`zk0` in a process of its own, as a person runs it: its own ZK0_HOME, one torch thread, no
colour (the slow tests that start simulations, clusters and Hubs)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

BIN = Path(sys.executable).parent  # the venv's zk0, ray, flower-* scripts


def process_env(home: Path, base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``base`` (default: this environment) without any ZK0_* setting, with ZK0_HOME=``home``."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("ZK0_")}
    env.update(ZK0_HOME=str(home), OMP_NUM_THREADS="1", NO_COLOR="1", **extra)
    return env


def zk0(env: Mapping[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "zk0"), *args], env=dict(env), capture_output=True, text=True, timeout=timeout)
