#!/usr/bin/env bash
# The GPU path in one run: under 8 minutes on one H100/H200-class GPU, no network.
#
#   bash bench/gpu_check.sh [OUT.json [LOG_DIR]]
#
# OUT.json (default bench/results/gpu_check.json) is the summary, rewritten after every step, so a
# run killed part-way still leaves what it measured. LOG_DIR (default: OUT.json's path without
# .json, plus -logs) keeps each step's log and the small files of its run records.
#
# Python: $ZK0_VENV (a virtualenv with zk0 installed), else this checkout's .venv, else the
# environment of the `zk0` on PATH, else python3 on PATH: the first that imports zk0cli, torch,
# lerobot and flwr. With none, or no CUDA for torch, OUT.json holds the error and the script exits
# 4 at once. Nothing touches the network (HF_HUB_OFFLINE=1, RAY_USAGE_STATS_ENABLED=0, ...).
#
# Steps, each under `timeout` within one time budget (ZK0_GPU_CHECK_BUDGET_S, default 440 s on a
# GPU, so the whole script stays under 8 minutes), each step's wall time and the total in the JSON:
# 1. `zk0 doctor --json` (what zk0 sees: driver, devices, bf16).
# 2. Real-geometry SmolVLA (450M, random weights) training, zk0's loop vs LeRobot's update_policy
#    with the same bf16 mixed precision (bench/train_throughput.py): steps/s ratio >= 0.95, peak
#    memory above the policy's own <= 1.05x (one policy on the GPU at a time).
# 3. The demo federation (server + 2 nodes, TLS, node auth) on the GPU for 3 rounds: the resident
#    ClientApp host's CUDA memory after each round (allocated and reserved) does not grow after
#    round 1 (<= 2% + 64 MiB).
# 4. The same 2-client simulation with fp32 and with bf16-delta weights on the wire: final server
#    eval loss within 1%; then fp32 once more, the run-to-run noise to read that 1% against, when
#    the budget still has room for it (the JSON says when it had not).
# ZK0_GPU_CHECK_DEVICE=cpu runs every step on a CPU with the tiny policy and few steps: a check of
# this script, not of a GPU (its targets are not judged).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$(realpath -m "${1:-$here/bench/results/gpu_check.json}")
logs=$(realpath -m "${2:-${out%.json}-logs}")
device=${ZK0_GPU_CHECK_DEVICE:-cuda}
mkdir -p "$(dirname "$out")" "$logs"
now_ms() {  # bash 5's clock, else date's
  if [ -n "${EPOCHREALTIME:-}" ]; then local t=${EPOCHREALTIME//[.,]/}; echo $((t / 1000)); else echo $(($(date +%s%N) / 1000000)); fi
}
started=$(now_ms)
elapsed_s() { echo $((($(now_ms) - started) / 1000)); }

fail_fast() {  # no usable Python: one JSON error, exit 4
  printf '{\n  "device": "%s",\n  "error": "%s",\n  "hint": "%s",\n  "total_s": %s\n}\n' "$device" "$1" "$2" "$(elapsed_s)" | tee "$out"
  exit 4
}

# --- the Python environment ---------------------------------------------------------------------
candidates=()
[ -n "${ZK0_VENV:-}" ] && candidates+=("$ZK0_VENV/bin/python")
candidates+=("$here/.venv/bin/python")
if command -v zk0 >/dev/null 2>&1; then
  candidates+=("$(head -n1 "$(command -v zk0)" | sed 's/^#! *//; s/ .*$//')")
fi
command -v python3 >/dev/null 2>&1 && candidates+=("$(command -v python3)")
py=""
for candidate in "${candidates[@]}"; do
  # from / : the checkout's own zk0cli/ beside the working directory does not count as installed
  if [ -x "$candidate" ] && (cd / && "$candidate" -c 'import zk0cli, torch, lerobot, flwr') >/dev/null 2>&1; then
    py=$candidate
    break
  fi
done
[ -n "$py" ] || fail_fast "no Python environment with zk0, torch, lerobot and flwr (looked at: ${candidates[*]:-nothing})" \
  "install zk0 with ./install.sh (ZK0_VENV=/path/venv ./install.sh to choose where), or set ZK0_VENV to a venv that has it"
if [ "$device" != cpu ] && ! "$py" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' >/dev/null 2>&1; then
  fail_fast "torch in $py sees no CUDA device" \
    "check nvidia-smi and that torch is a CUDA build; ZK0_GPU_CHECK_DEVICE=cpu checks this script on a CPU"
fi
scripts=$("$py" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
zk0=("$py" -m zk0cli)
[ -x "$scripts/zk0" ] && zk0=("$scripts/zk0")

work=$(mktemp -d "${TMPDIR:-/tmp}/zk0-gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT  # datasets, backbones, checkpoints (GBs); logs and summaries are in $logs
export PATH="$scripts:$PATH" ZK0_HOME=$work/home HF_HOME=$work/hf NO_COLOR=1 \
  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 \
  FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 WANDB_MODE=disabled

if [ "$device" = cpu ]; then
  budget=${ZK0_GPU_CHECK_BUDGET_S:-1500}
  policy=tiny steps=3 repeats=1 batch=2 local_steps=2 round_timeout=300 client_gpus=0
  cap_doctor=120 cap_train=300 cap_demo=420 cap_sim=300
else
  budget=${ZK0_GPU_CHECK_BUDGET_S:-440}
  policy=real-geometry steps=20 repeats=3 batch=8 local_steps=10 round_timeout=120 client_gpus=0.5
  cap_doctor=60 cap_train=150 cap_demo=150 cap_sim=100
fi
run=(-c "device=$device" -c "policy=$policy" -c "local-steps=$local_steps" -c "batch-size=$batch"
  -c eval-batches=2 -c "round-timeout-s=$round_timeout")
printf 'step\tstatus\trc\tseconds\tlimit\n' > "$work/steps.tsv"

say() { printf '\033[1m==>\033[0m %s (%ss)\n' "$*" "$(elapsed_s)" >&2; }
seconds=()  # name=wall seconds of each step run so far

step() {  # step NAME CAP NEED COMMAND...: run it under timeout within the budget (skipped when less
  # than NEED seconds are left), stdout to $work/NAME.out, stderr to $logs/NAME.log; then summarise
  local name=$1 cap=$2 need=$3; shift 3
  local limit=$((budget - $(elapsed_s) - 15))  # 15 s kept for the summary
  [ "$limit" -gt "$cap" ] && limit=$cap
  if [ "$limit" -lt "$need" ]; then
    printf '%s\tskipped: %ss of the %ss budget left, it needs about %ss\t\t0\t0\n' \
      "$name" "$((budget - $(elapsed_s)))" "$budget" "$need" >> "$work/steps.tsv"
  else
    say "$name (at most ${limit}s)"
    local begun rc status took
    begun=$(now_ms)
    timeout --kill-after=30 "$limit" "$@" > "$work/$name.out" 2> "$logs/$name.log"
    rc=$?
    case $rc in
      0) status=ok ;;
      124|137) status="timed out after ${limit}s" ;;
      *) status="exit $rc" ;;
    esac
    took=$((($(now_ms) - begun) / 100))
    printf '%s\t%s\t%s\t%s.%s\t%s\n' "$name" "$status" "$rc" "$((took / 10))" "$((took % 10))" "$limit" >> "$work/steps.tsv"
    seconds+=("$name=$((took / 10))")
    cp "$work/$name.out" "$logs/$name.out"
  fi
  "$py" "$work/summarise.py" "$work" "$out" "$logs" "$device" "$budget" "$(elapsed_s)" "$py"
}

cat > "$work/summarise.py" <<'EOF'
"""Read what the steps left so far and (re)write the summary (targets judged on CUDA only)."""
import csv
import json
import shutil
import sys
from pathlib import Path

work, out, logs = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
device, budget, elapsed, python = sys.argv[4], float(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
steps = {row["step"]: row for row in csv.DictReader((work / "steps.tsv").open(), delimiter="\t")}


def load(name, path=None):
    """What step ``name`` printed as JSON (or wrote to ``path``), else why there is nothing."""
    if name not in steps:
        return {"status": "not run yet"}
    try:
        return json.loads((path or work / f"{name}.out").read_text())
    except (OSError, ValueError) as exc:
        return {"error": f"{name}: {exc}", "status": steps[name]["status"]}


def record(result, step):
    """The run's round records; its small files are copied to the logs dir."""
    run_dir = result.get("run_dir") if isinstance(result, dict) else None
    if not run_dir or not Path(run_dir).is_dir():
        return []
    kept = logs / f"{step}-record"
    kept.mkdir(exist_ok=True)
    for path in Path(run_dir).glob("*"):
        if path.is_file() and path.suffix in (".json", ".log"):
            shutil.copy2(path, kept / path.name)
    return [json.loads(p.read_text()) for p in sorted(Path(run_dir).glob("round_*_server_eval.json"))]


def final_loss(result, step):
    evaluated = [r for r in record(result, step) if r.get("server_eval")]
    return evaluated[-1]["server_eval"]["composite"]["policy_loss"] if evaluated else None


def memory_per_round(result):
    per_node = {}
    for entry in sorted(record(result, "demo"), key=lambda r: r["round"]):
        for client in (entry.get("clients") or {}).get("each", []):
            metrics = client.get("metrics", {})
            if "gpu_memory_mib" in metrics:
                per_node.setdefault(client.get("name") or str(client.get("node")), []).append(
                    {
                        "round": entry["round"],
                        "allocated_mib": metrics["gpu_memory_mib"],
                        "reserved_mib": metrics.get("gpu_reserved_mib"),
                        "peak_mib": metrics.get("gpu_peak_mib"),
                    }
                )
    return per_node


def flat(rounds, key):
    """Every round after the first within 2% + 64 MiB of round 1's value."""
    values = [r[key] for r in rounds if r.get(key) is not None]
    return len(values) >= 2 and all(v <= values[0] * 1.02 + 64 for v in values[1:])


def apart(a, b):
    return abs(a - b) / abs(b) if a is not None and b else None


train = load("train", work / "train.json")
demo = load("demo")
memory = memory_per_round(demo)
losses = {name: final_loss(load(f"sim-{name}"), f"sim-{name}") for name in ("fp32", "bf16-delta", "fp32-again")}
wire_apart, noise = apart(losses["bf16-delta"], losses["fp32"]), apart(losses["fp32-again"], losses["fp32"])
noise_step = steps.get("sim-fp32-again", {}).get("status", "not run yet")
targets = {
    "train_speed_ratio>=0.95": train.get("ratio_met"),
    "train_memory_ratio<=1.05": train.get("memory_met"),
    "host_memory_flat_after_round_1": (
        all(flat(rounds, "allocated_mib") and flat(rounds, "reserved_mib") for rounds in memory.values())
        if memory
        else None
    ),
    "bf16_vs_fp32_within_1%": wire_apart < 0.01 if wire_apart is not None else None,
}
for name, s in steps.items():
    if name == "train" and s["rc"] == "1":
        s["status"] += " (train_throughput.py's exit when a target is missed: see train below)"
ran = [s for s in steps.values() if s["status"] == "ok" or s["status"].startswith("exit")]
summary = {
    "what": (
        "bench/gpu_check.sh on a GPU"
        if device != "cpu"
        else "CPU DRY RUN of bench/gpu_check.sh (ZK0_GPU_CHECK_DEVICE=cpu, tiny policy, few steps): it shows the "
        "script runs end to end; it is not a GPU result and its targets are not judged"
    ),
    "device": device,
    "judged": device != "cpu",
    "python": python,
    "budget_s": budget,
    "total_s": round(elapsed, 1),
    "complete": len(ran) == 6,  # every step ran to its end (none timed out or was skipped)
    "steps": {
        name: {
            "status": s["status"],
            "seconds": float(s["seconds"]),
            "limit_s": float(s["limit"]),
            "log": str(logs / f"{name}.log") if s["limit"] != "0" else None,
        }
        for name, s in steps.items()
    },
    "doctor": load("doctor"),
    "train": train,
    "demo": {
        "run": demo.get("run_id") or demo.get("error") or demo.get("status"),
        "gpu_memory_per_round": memory,
        "growth_mib": {
            node: {k: rounds[-1][k] - rounds[0][k] for k in ("allocated_mib", "reserved_mib") if rounds[0][k] is not None}
            for node, rounds in memory.items()
        },
    },
    "wire": {
        "final_server_eval_loss": losses,
        "relative_difference_bf16_vs_fp32": wire_apart,
        "noise_fp32_vs_fp32": noise if noise is not None else f"no number: the fp32 rerun's step is '{noise_step}'",
    },
    "targets": targets,
}
tmp = out.with_suffix(".json.tmp")
tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
tmp.replace(out)
EOF

say "gpu_check on $device with $py; summary $out, logs $logs"
step doctor "$cap_doctor" 20 "${zk0[@]}" --json doctor
step train "$cap_train" 20 "$py" "$here/bench/train_throughput.py" --policy "$policy" \
  --device "$device" --steps "$steps" --repeats "$repeats" --batch-size "$batch" --json "$work/train.json"
step demo "$cap_demo" 20 "${zk0[@]}" --json demo --rounds 3 "${run[@]}"
sim=("${zk0[@]}" --json sim --clients 2 --rounds 3 --client-gpus "$client_gpus" "${run[@]}")
step sim-fp32 "$cap_sim" 20 "${sim[@]}" -c wire-encoding=fp32
step sim-bf16-delta "$cap_sim" 20 "${sim[@]}" -c wire-encoding=bf16-delta
# The noise control only when it can finish: as long again as the fp32 run took, and a tenth more.
took=$(printf '%s\n' "${seconds[@]}" | sed -n 's/^sim-fp32=//p')
step sim-fp32-again "$cap_sim" $(((${took:-$cap_sim} * 11 + 9) / 10)) "${sim[@]}" -c wire-encoding=fp32
"$py" -c 'import json, sys; s = json.load(open(sys.argv[1])); print(json.dumps({k: s[k] for k in ("what", "total_s", "steps", "targets", "wire")}, indent=2))' "$out"
say "done: $out"
