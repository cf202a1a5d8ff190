"""What every doctor check receives: paths, config, role, time limits and the resource needs."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from zk0cli.core.config import Config
from zk0cli.core.paths import Paths

# Runs a command and returns its stdout. Raises FileNotFoundError when the program is missing,
# subprocess.TimeoutExpired and subprocess.CalledProcessError like subprocess.run(check=True).
CommandRunner = Callable[[list[str], float], str]


def run_command(argv: list[str], timeout_s: float) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=True).stdout


@dataclass(frozen=True)
class RunNeeds:
    """What one SmolVLA training run needs on a node. Rules of thumb, not measurements here."""

    gpu_memory_gib: float = 8.0  # bf16 training of smolvla_base at batch 8
    gpu_memory_source: str = (
        "zk0 estimate, not measured: 450M params in bf16 ~0.9 GiB, ~100M trainable with fp32 AdamW state"
        " ~1.6 GiB, activations of batch 8 with 2 cameras the rest"
    )
    disk_gib: float = 10.0  # smolvla_base ~1 GiB + a dataset of a few GiB + per-round checkpoints (~0.4 GiB each)
    disk_min_gib: float = 2.0  # below this a run cannot even write its checkpoints
    hf_cache_gib: float = 2.0  # smolvla_base and the SmolVLM2 processor files land in the HF cache
    ram_gib: float = 8.0  # the policy in fp32 on CPU (~1.8 GiB) + optimizer + data loading
    cpu_cores: int = 4  # video decoding and data loading run beside training


@dataclass
class DoctorContext:
    paths: Paths
    config: Config
    role: str  # "server", "node", or "" when this machine is not initialised
    timeout_s: float = 3.0  # every network operation's limit
    skip_network: bool = False
    run_command: CommandRunner = run_command  # nvidia-smi goes through here: tests feed recorded output
    needs: RunNeeds = field(default_factory=RunNeeds)
