"""Round overhead of a local federation: round wall time against the clients' own training time.

    .venv/bin/python bench/round_overhead.py [--rounds 3] [--local-steps 250]

Starts the `zk0 demo` federation (TLS SuperLink behind the fleet proxy, two supervised nodes
with their own keys, node auth) and runs ``--rounds`` rounds at a local workload of about 30 s
per round on this 2-core CPU (``--local-steps``), then reads:

- the round's wall time, from the run record (``seconds``: train messages out -> aggregated and
  evaluated), and the clients' own training time (their ``seconds`` metric: the training loop);
- from each node's log, where a train message's time goes: the download from the SuperLink
  ("Receiving" -> "Received successfully"), the hand-off to zk0's resident ClientApp host,
  the time to the first training step (in round 1 the host builds the policy and opens the
  data; later rounds reuse them), training, building the reply and its upload ("Sending" ->
  "Sent successfully");
- the rest (the SuperNode's idle poll, server aggregation and evaluation, record/plots,
  polling) is the round wall time minus the slowest node's message time.

Target: round wall / slowest client's training <= 1.15 in the steady state (every round after
the first; round 1 also pays the host's one-time policy build and is printed on its own). Prints
CPU load next to the numbers (the machine is shared); exit code 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zk0cli.core.paths import Paths  # noqa: E402
from zk0cli.services import demo  # noqa: E402

TARGET = 1.15
STAMP = r"^(?P<t>\d{4}-\d\d-\d\dT[\d:.]+)Z "
NODE, HOST = r"\[supernode\] ", r"\[clientapp\] "  # the SuperNode and zk0's resident ClientApp host
EVENTS = {
    "received": STAMP + NODE + r"INFO :\s+Receiving: train message",
    "downloaded": STAMP + NODE + r"INFO :\s+Received successfully",
    "task": STAMP + HOST + r"zk0: task for run \d+: train message",
    "first_step": STAMP + HOST + r"round \d+ \S+ \[[#.]+\] 1/",
    "last_step": STAMP + HOST + r"round \d+ \S+ \[#+\] (?P<n>\d+)/(?P=n) ",
    "sending": STAMP + NODE + r"INFO :\s+Sending: train message",
    "sent": STAMP + NODE + r"INFO :\s+Sent successfully",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=250)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="zk0-bench-overhead-"))
    root = work / "federation"
    load_before = os.getloadavg()
    options = demo.DemoOptions(
        rounds=args.rounds, keep=True, root=root, settings={"local-steps": args.local_steps, "eval-frequency": 1000}
    )
    started = time.monotonic()
    result = demo.run(
        options,
        Paths.resolve(work / "caller").runs_dir,
        on_message=lambda m: print("  " + m, flush=True),
        on_round=lambda entry, rounds: print(f"  round {entry['round']}/{rounds} done", flush=True),
    )
    wall = time.monotonic() - started
    rounds = [json.loads(p.read_text()) for p in sorted(result.run_dir.glob("round_*_server_eval.json"))]
    rounds = sorted((r for r in rounds if r["round"] > 0), key=lambda r: r["round"])
    messages = {name: train_messages(root / name / "state" / "logs" / f"node-{name}.log") for name, _ in demo.NODES}
    print(
        f"\nload average before {fmt_load(load_before)}, after {fmt_load(os.getloadavg())}; "
        f"{args.rounds} rounds, local-steps {args.local_steps}; demo total {wall:.0f} s "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in result.stage_seconds.items())})"
    )
    ratios = {}
    for entry in rounds:
        each = entry["clients"]["each"]
        training = max(c["metrics"]["seconds"] for c in each)
        ratio = ratios[entry["round"]] = entry["seconds"] / training
        print(
            f"\nround {entry['round']}: wall {entry['seconds']:.1f} s, slowest client training {training:.1f} s, "
            f"ratio {ratio:.2f} (target <= {TARGET})"
        )
        slowest_message = 0.0
        for name, per_round in messages.items():
            parts = per_round[entry["round"] - 1] if len(per_round) >= entry["round"] else None
            if parts is None:
                continue
            slowest_message = max(slowest_message, parts["total"])
            print(
                f"  {name:6} message {parts['total']:5.1f} s = download {parts['download']:4.1f} + handoff to the "
                f"ClientApp host {parts['handoff']:4.1f} + to first step {parts['startup']:4.1f} + training "
                f"{parts['training']:4.1f} + reply built {parts['reply']:4.1f} + upload {parts['upload']:4.1f}"
            )
        print(f"  server side and polling (round wall - slowest message): {entry['seconds'] - slowest_message:.1f} s")
    steady = [ratio for number, ratio in ratios.items() if number > 1]
    if not steady:
        print(f"\nround 1 ratio {ratios.get(1, 0):.2f}; run at least 2 rounds for the steady state")
        return 1
    worst = max(steady)
    print(
        f"\nsteady state (rounds 2-{max(ratios)}): worst ratio {worst:.2f}, target <= {TARGET} "
        f"{'met' if worst <= TARGET else 'MISSED'}; round 1 (one-time policy build on each node) "
        f"{ratios[1]:.2f}; record {result.run_dir}"
    )
    return 0 if worst <= TARGET else 1


def train_messages(log: Path) -> list[dict[str, float]]:
    """One breakdown per train message in a node's log, in order."""
    patterns = {name: re.compile(p) for name, p in EVENTS.items()}
    found: list[dict[str, float]] = []
    current: dict[str, float] = {}
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        for name, pattern in patterns.items():
            match = pattern.match(line)
            if not match or (name != "received" and "received" not in current) or name in current:
                continue
            current[name] = datetime.fromisoformat(match["t"]).timestamp()
            if name == "sent":
                if len(current) == len(EVENTS):
                    found.append(breakdown(current))
                current = {}
    return found


def breakdown(t: dict[str, float]) -> dict[str, float]:
    return {
        "download": t["downloaded"] - t["received"],
        "handoff": t["task"] - t["downloaded"],
        "startup": t["first_step"] - t["task"],
        "training": t["last_step"] - t["first_step"],
        "reply": t["sending"] - t["last_step"],
        "upload": t["sent"] - t["sending"],
        "total": t["sent"] - t["received"],
    }


def fmt_load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.1f}" for v in load)


if __name__ == "__main__":
    sys.exit(main())
