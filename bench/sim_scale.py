"""`zk0 sim --clients N --rounds R` at scale on this machine: wall time and peak RSS of the whole
process tree (zk0, the SuperLink, the ServerApp, Ray and its client actors), sampled every 0.5 s.

    .venv/bin/python bench/sim_scale.py [--clients 32] [--rounds 2] [--local-steps 2]

Tiny policy, generated datasets (one per client), its own ZK0_HOME under a temporary directory.
Clients share the CPUs: this is a scale test (does it finish, how much memory), not a speed test.
The baseline in the same run is the same simulation with 2 clients: the ratio says how memory
grows with the number of clients. Exit code 1 when the large run fails.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent


def tree_rss(root: psutil.Process) -> int:
    """Resident bytes of ``root`` and every descendant (Ray's raylet and workers included)."""
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total


def run_sim(clients: int, rounds: int, local_steps: int, home: Path) -> tuple[int, float, int]:
    """(exit code, wall seconds, peak tree RSS bytes) of one `zk0 sim`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZK0_")}
    env.update(ZK0_HOME=str(home), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", NO_COLOR="1")
    args = ["sim", "--clients", str(clients), "--rounds", str(rounds), "--timeout", "3000"]
    args += ["-c", f"local-steps={local_steps}", "-c", "batch-size=2", "-c", "eval-batches=1"]
    started = time.monotonic()
    with open(home.parent / f"sim-{clients}.log", "wb") as log:
        process = subprocess.Popen([str(BIN / "zk0"), *args], env=env, stdout=log, stderr=subprocess.STDOUT)
        root, peak = psutil.Process(process.pid), 0
        while process.poll() is None:
            peak = max(peak, tree_rss(root))
            time.sleep(0.5)
    return process.returncode, time.monotonic() - started, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=2)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; tiny policy, {args.rounds} rounds x {args.local_steps} local steps")
    results = {}
    with tempfile.TemporaryDirectory(prefix="zk0-sim-scale-") as root:
        for clients in (2, args.clients):
            code, seconds, peak = run_sim(clients, args.rounds, args.local_steps, Path(root) / f"home-{clients}")
            results[clients] = (code, seconds, peak)
            print(
                f"{clients:>3} clients: exit {code}, wall {seconds:6.1f} s, "
                f"peak RSS of the process tree {peak / 2**20:7.1f} MiB"
            )
            if code != 0:
                print((Path(root) / f"sim-{clients}.log").read_text()[-3000:])
    small, large = results[2], results[args.clients]
    print(
        f"{args.clients} clients / 2 clients: wall {large[1] / small[1]:.2f}x, peak RSS {large[2] / small[2]:.2f}x "
        f"({args.clients // 2}x the clients)"
    )
    return 0 if large[0] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
