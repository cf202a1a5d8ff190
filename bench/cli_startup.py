"""Start-up time of `zk0 --help` against `flwr --help`, measured in the same run.

    .venv/bin/python bench/cli_startup.py [--runs 7]

Both commands come from the virtualenv this script runs in (its bin/). Each is run once to warm
the file cache, then RUNS times, alternating, so a busy moment hits both alike. Prints both
medians and the ratio zk0/flwr; the target is <= 0.5. Exit code 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 0.5


def wall_time(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    commands = {"zk0": [str(bin_dir / "zk0"), "--help"], "flwr": [str(bin_dir / "flwr"), "--help"]}
    with tempfile.TemporaryDirectory() as home:
        # zk0 reads its config under ZK0_HOME; Flower's update check and telemetry stay off.
        env = dict(os.environ, ZK0_HOME=home, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1", NO_COLOR="1")
        for argv in commands.values():
            wall_time(argv, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, argv in commands.items():
                times[name].append(wall_time(argv, env))
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["zk0"] / medians["flwr"]
    for name, median in medians.items():
        print(f"{name + ' --help':14} median {median * 1000:7.1f} ms over {args.runs} runs")
    verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
    print(f"ratio zk0/flwr: {ratio:.3f} (target <= {TARGET_RATIO}: {verdict})")
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
