#!/usr/bin/env bash
# The GPU path in one run: under 8 minutes on one H100/H200-class GPU, no network.
#
#   bash bench/gpu_check.sh [OUT.json]        (default: bench/results/gpu_check.json)
#
# 1. `zk0 doctor --json` on CUDA (what zk0 sees: driver, devices, bf16).
# 2. Real-geometry SmolVLA (450M, random weights) training: zk0's loop vs LeRobot's update_policy
#    with the same bf16 mixed precision: steps/s ratio >= 0.95, peak memory ratio <= 1.05.
# 3. The demo federation (server + 2 nodes, TLS, node auth) on the GPU for 3 rounds: the resident
#    ClientApp host's CUDA memory after each round (the record's gpu_memory_mib) does not grow
#    after round 1 (<= 2% + 64 MiB).
# 4. The same 2-client simulation with fp32 and with bf16-delta weights on the wire: final server
#    eval loss within 1%.
# All of it lands in one JSON summary. ZK0_GPU_CHECK_DEVICE=cpu runs every step on a CPU with the
# tiny policy and few steps: a check of this script, not of a GPU (its targets are not judged).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$here/bench/results/gpu_check.json}
device=${ZK0_GPU_CHECK_DEVICE:-cuda}
py=$here/.venv/bin/python
zk0=$here/.venv/bin/zk0
work=$(mktemp -d "${TMPDIR:-/tmp}/zk0-gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
export ZK0_HOME=$work/home HF_HUB_OFFLINE=1 HF_HOME=$work/hf NO_COLOR=1

if [ "$device" = cpu ]; then
  policy=tiny steps=3 repeats=1 batch=2 local_steps=2
else
  policy=real-geometry steps=20 repeats=3 batch=8 local_steps=20
fi
run=(-c "device=$device" -c "policy=$policy" -c "local-steps=$local_steps" -c batch-size=$batch -c eval-batches=2)
say() { printf '\033[1m==>\033[0m %s (%ds)\n' "$*" "$SECONDS" >&2; }

say "1/4 zk0 doctor"
"$zk0" --json doctor > "$work/doctor.json" || true  # a failed check is data here, not the end

say "2/4 training step: zk0 vs LeRobot's update_policy ($policy, $device)"
"$py" "$here/bench/train_throughput.py" --policy "$policy" --device "$device" --steps $steps \
  --repeats $repeats --batch-size $batch --json "$work/train.json" > "$work/train.txt" 2>&1 || true

say "3/4 the demo federation on $device, 3 rounds"
"$zk0" --json demo --rounds 3 "${run[@]}" > "$work/demo.json" 2> "$work/demo.log" || true

say "4/4 fp32 vs bf16-delta on the wire (zk0 sim, 2 clients x 3 rounds)"
for encoding in fp32 bf16-delta; do
  "$zk0" --json sim --clients 2 --rounds 3 --client-gpus "$([ "$device" = cpu ] && echo 0 || echo 0.5)" \
    "${run[@]}" -c "wire-encoding=$encoding" > "$work/sim-$encoding.json" 2> "$work/sim-$encoding.log" || true
done

"$py" - "$work" "$out" "$device" <<'EOF'
"""Read what the four steps left and write the summary (targets judged on CUDA only)."""
import json
import sys
from pathlib import Path

work, out, device = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]


def load(name):
    try:
        return json.loads((work / name).read_text())
    except (OSError, ValueError) as exc:
        return {"error": f"{name}: {exc}", "log_tail": _tail(name)}


def _tail(name):
    for log in (work / name.replace(".json", ".log"), work / name.replace(".json", ".txt")):
        if log.exists():
            return log.read_text()[-1500:]
    return ""


def rounds(result):
    run_dir = result.get("run_dir") or result.get("record")
    if not run_dir:
        return []
    return [json.loads(p.read_text()) for p in sorted(Path(run_dir).glob("round_*_server_eval.json"))]


def final_loss(result):
    evaluated = [r for r in rounds(result) if r.get("server_eval")]
    return evaluated[-1]["server_eval"]["composite"]["policy_loss"] if evaluated else None


doctor = load("doctor.json")
train = load("train.json")
demo = load("demo.json")
memory = {}  # node -> [gpu_memory_mib per round]
for entry in rounds(demo):
    for client in (entry.get("clients") or {}).get("each", []):
        if "gpu_memory_mib" in client.get("metrics", {}):
            memory.setdefault(client.get("name") or client["node"], []).append(client["metrics"]["gpu_memory_mib"])
growth = {node: values[-1] - values[0] for node, values in memory.items() if values}
losses = {enc: final_loss(load(f"sim-{enc}.json")) for enc in ("fp32", "bf16-delta")}
apart = abs(losses["bf16-delta"] - losses["fp32"]) / losses["fp32"] if None not in losses.values() else None
targets = {
    "train_speed_ratio>=0.95": train.get("ratio_met"),
    "train_memory_ratio<=1.05": (train.get("memory_ratio") or 99) <= 1.05 if "memory_ratio" in train else None,
    "host_memory_flat_after_round_1": all(
        values[-1] <= values[0] * 1.02 + 64 for values in memory.values()
    ) if memory else None,
    "bf16_vs_fp32_within_1%": apart < 0.01 if apart is not None else None,
}
summary = {
    "device": device,
    "judged": device != "cpu",
    "doctor": doctor,
    "train": train,
    "demo": {"run": demo.get("run_id") or demo.get("error"), "gpu_memory_mib_per_round": memory, "growth_mib": growth},
    "wire": {"final_server_eval_loss": losses, "relative_difference": apart},
    "targets": targets,
}
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
print(json.dumps({"targets": targets, "wire": summary["wire"], "demo_growth_mib": growth}, indent=2))
print(f"summary: {out}", file=sys.stderr)
EOF
say "done"
