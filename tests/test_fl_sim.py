"""End to end: `zk0 sim` on Flower's Simulation Engine, 2 clients x 3 rounds, tiny SmolVLA on CPU.

One simulation (a real `zk0` process, its own SuperLink, Ray) serves the module; the tests read
the run record it leaves.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from zk0_process import BIN, process_env, zk0

from zk0cli.fl.run_config import RunConfig

pytestmark = pytest.mark.slow

ROUNDS = 3
SIM_CONFIG = {
    "policy": "tiny",
    "local-steps": 5,
    "batch-size": 4,
    "chunk-size": 10,
    "eval-batches": 2,
    "lr": 1e-3,
    "seed": 3,
    "checkpoint-interval": 2,
    "keep-last-checkpoints": 1,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def sim_env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("sim")
    hub = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(home / "hf"), "HF_LEROBOT_HOME": str(home / "hf" / "lerobot")}
    return process_env(home / "zk0home", **hub)


@pytest.fixture(scope="module")
def sim_run(sim_env, fl_datasets) -> dict:
    args = ["--json", "sim", "--clients", "2", "--rounds", str(ROUNDS), "--timeout", "850"]
    args += [item for uri in fl_datasets for item in ("--dataset", f"local:{uri}")]
    args += [item for key, value in SIM_CONFIG.items() for item in ("-c", f"{key}={json.dumps(value)}")]
    done = zk0(sim_env, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    run_dir = Path(result["run_dir"])
    rounds = {n: json.loads((run_dir / f"round_{n}_server_eval.json").read_text()) for n in range(ROUNDS + 1)}
    config = json.loads((run_dir / "config.json").read_text())
    return {"result": result, "dir": run_dir, "rounds": rounds, "config": config, "stderr": done.stderr}


def test_run_record_is_complete(sim_run, fl_datasets):
    run_dir, rounds = sim_run["dir"], sim_run["rounds"]
    assert sim_run["result"]["state"] == "completed"
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    config = sim_run["config"]
    assert config["run_config"]["num-server-rounds"] == ROUNDS and config["run_config"]["wire-encoding"] == "bf16-delta"
    assert {"zk0", "flwr", "lerobot", "torch"} <= set(config["versions"])
    assert sorted(config["dataset_fingerprints"]) == sorted(f"local:{d}" for d in fl_datasets)
    assert all(len(fp) == 64 for fp in config["dataset_fingerprints"].values())
    metrics = json.loads((run_dir / "federated_metrics.json").read_text())
    history = json.loads((run_dir / "policy_loss_history.json").read_text())
    assert [m["round"] for m in metrics] == [h["round"] for h in history] == list(range(ROUNDS + 1))
    for n in range(1, ROUNDS + 1):
        entry = rounds[n]
        assert entry["clients"]["aggregate"]["num_clients"] == 2 and entry["rejected"] == entry["failed"] == []
        assert entry["plan"]["lr"]["why"][0].startswith("cosine") and entry["plan"]["mu"]["why"]
        assert {c["dataset"] for c in entry["clients"]["each"]} == {"pick", "stack"}
        for client in entry["clients"]["each"]:
            assert {
                "loss",
                "policy_loss",
                "fedprox_loss",
                "grad_norm",
                "steps",
                "samples",
                "seconds",
                "lr",
                "update_norm",
            } <= set(client["metrics"])
            assert client["metrics"]["steps"] == 5 and client["metrics"]["samples"] == 20
        assert entry["federated_eval"]["aggregate"]["num_clients"] == 2
        assert set(entry["server_eval"]["datasets"]) == {"pick-heldout", "stack-heldout"}
    assert {p.name for p in (run_dir / "plots").iterdir()} == {"losses.png", "lr_mu.png"}
    # checkpoints at rounds 2 and 3, only the last kept; final/ points at it
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [f"round_{ROUNDS:04d}"]
    assert (run_dir / "final").resolve() == (run_dir / "checkpoints" / f"round_{ROUNDS:04d}").resolve()
    # videos: the first evaluation (video-frequency 5) and the last round
    videos = sorted(p.name for p in (run_dir / "videos").iterdir())
    assert videos == ["round_0000.json", "round_0000.mp4", f"round_{ROUNDS:04d}.json", f"round_{ROUNDS:04d}.mp4"]
    video = json.loads((run_dir / "videos" / f"round_{ROUNDS:04d}.json").read_text())
    assert video["round"] == ROUNDS and video["action_error"] >= 0 and video["fps"] == 30
    assert (run_dir / "flower.log").stat().st_size > 0


def test_server_eval_loss_improves(sim_run):
    history = json.loads((sim_run["dir"] / "policy_loss_history.json").read_text())
    assert history[-1]["policy_loss"] < history[0]["policy_loss"]


def test_sim_leaves_no_process_behind(sim_run, sim_env):
    import psutil

    flwr_home = str(Path(sim_env["ZK0_HOME"]) / "state" / "flwr-sim")
    leftovers = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(flwr_home in part for part in proc.info["cmdline"] or []):
                leftovers.append((proc.pid, " ".join(proc.info["cmdline"])[:120]))
        except psutil.Error:
            continue
    assert leftovers == []


def built_for(config: RunConfig, dataset_root: Path):
    from zk0cli.datasets.uri import open_metadata, parse_uri
    from zk0cli.policy.build import build_policy

    return build_policy(config.policy_spec(), open_metadata(parse_uri(f"local:{dataset_root}")))


def test_checkpoint_reloads_with_identical_outputs(sim_run, fl_datasets, sim_env, monkeypatch, torch_one_thread):
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla import SmolVLAPolicy

    from zk0cli.datasets.partition import open_partition
    from zk0cli.datasets.uri import open_metadata, parse_uri
    from zk0cli.policy.build import BuiltPolicy
    from zk0cli.policy.train import evaluate

    monkeypatch.setenv("ZK0_HOME", sim_env["ZK0_HOME"])  # the backbone the checkpoint's config names
    config = RunConfig.from_mapping(sim_run["config"]["run_config"])
    final = sim_run["dir"] / "final"
    policy = SmolVLAPolicy.from_pretrained(final)
    preprocessor, postprocessor = make_pre_post_processors(policy.config, pretrained_path=str(final))
    template = built_for(config, fl_datasets[0])
    reloaded = BuiltPolicy(policy, preprocessor, postprocessor, template.device, None, template.spec)
    uri = parse_uri(f"local:{fl_datasets[0]}")
    heldout = open_partition(
        uri,
        heldout=config.client_eval_episodes,
        split="heldout",
        delta_timestamps=reloaded.delta_timestamps(open_metadata(uri)),
    )
    metrics = evaluate(
        reloaded, heldout, seed=config.seed, max_batches=config.eval_batches, batch_size=config.batch_size
    )
    recorded = sim_run["rounds"][ROUNDS]["server_eval"]["datasets"]["pick-heldout"]
    assert metrics["policy_loss"] == pytest.approx(recorded["policy_loss"], rel=1e-6)
    assert metrics["action_mae"] == pytest.approx(recorded["action_error"], rel=1e-6)


def test_frozen_vlm_is_bit_identical_and_only_trainables_changed(
    sim_run, fl_datasets, sim_env, monkeypatch, torch_one_thread
):
    import torch
    from safetensors.torch import load_file

    from zk0cli.policy.trainable import VLM_PREFIX, trainable_names

    monkeypatch.setenv("ZK0_HOME", sim_env["ZK0_HOME"])
    config = RunConfig.from_mapping(sim_run["config"]["run_config"])
    start = built_for(config, fl_datasets[0]).policy  # what every node and the server built at round 0
    saved = load_file(str(sim_run["dir"] / "final" / "model.safetensors"))
    initial = start.state_dict()
    vlm = [name for name in saved if name.startswith(VLM_PREFIX)]
    assert vlm and all(torch.equal(saved[name], initial[name]) for name in vlm)
    trainable = set(trainable_names(start))
    assert sim_run["config"]["trainable_parameters"] == sum(initial[n].numel() for n in trainable)
    changed = {name for name in saved if not torch.equal(saved[name], initial[name])}
    assert changed and changed <= trainable


def test_export_holds_the_last_global_and_the_node_stats(sim_run, fl_datasets, sim_env, tmp_path):
    """The clients kept the last global they loaded; `zk0 export` by Flower run id gives the run's
    final global (up to the wire's bf16 rounding), and by record directory the checkpoint's exactly."""
    import torch
    from safetensors.torch import load_file

    from zk0cli.policy.trainable import VLM_PREFIX

    final = load_file(str(sim_run["dir"] / "final" / "model.safetensors"))
    node = f"local:{fl_datasets[1]}"
    for source, name in ((str(sim_run["config"]["flwr_run_id"]), "kept"), (str(sim_run["dir"]), "record")):
        done = zk0(sim_env, "--json", "export", source, "-o", str(tmp_path / name), "--dataset", node, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        summary = json.loads(done.stdout)
        assert summary["server_round"] == ROUNDS and summary["normalised_by"]["dataset"] == node
        exported = load_file(str(tmp_path / name / "model.safetensors"))
        for key, value in final.items():
            if name == "record" or key.startswith(VLM_PREFIX):
                assert torch.equal(exported[key], value), (name, key)
            else:
                torch.testing.assert_close(exported[key], value, rtol=1e-2, atol=1e-3)
        assert summary["cameras"] == ["front"] and summary["run_datasets"]


def test_bf16_delta_uplink_matches_fp32_uplink(sim_run, fl_datasets, tmp_path, torch_one_thread):
    """The same run (config and seed) with fp32 uplink, through the in-process grid: final loss within 2%."""
    from loopback_grid import LoopbackGrid

    from zk0cli.fl import client_app as zk0_client
    from zk0cli.fl.records import RunRecord
    from zk0cli.fl.server_app import run_federation

    values = {
        **sim_run["config"]["run_config"],
        "wire-encoding": "fp32",
        "runs-dir": str(tmp_path),
        "run-name": "fp32",
    }
    config = RunConfig.from_mapping(values)
    grid = LoopbackGrid(zk0_client.app, [{"partition-id": i, "num-partitions": 2} for i in range(2)], config.to_flwr())
    record = RunRecord.create(tmp_path, "fp32")
    run_federation(grid, config, record)
    fp32 = record.rounds()[-1]["server_eval"]["composite"]["policy_loss"]
    bf16 = sim_run["rounds"][ROUNDS]["server_eval"]["composite"]["policy_loss"]
    print(
        f"final server eval loss: bf16-delta uplink {bf16:.6f}, fp32 uplink {fp32:.6f} "
        f"({100 * abs(bf16 - fp32) / fp32:.3f}% apart)"
    )
    assert abs(bf16 - fp32) / fp32 < 0.02, (bf16, fp32)


def test_sim_generates_a_task_per_client_without_datasets(monkeypatch, zk0_home):
    from zk0cli.core.paths import Paths
    from zk0cli.services import simulation

    monkeypatch.setattr(simulation, "SAMPLE_EPISODES", 2)
    monkeypatch.setattr(simulation, "SAMPLE_FRAMES", 10)
    config = simulation.resolve_config(simulation.SimRequest(clients=3, rounds=1), Paths.resolve())
    roots = [Path(uri.removeprefix("local:")) for uri in config.dataset_uris()]
    assert [root.name for root in roots] == ["sim-pick-0", "sim-stack-1", "sim-sort-2"]
    episodes = [json.loads((root / "meta" / "info.json").read_text())["total_episodes"] for root in roots]
    assert episodes == [2, 2, 2]
    assert config.policy == "tiny" and config.min_available_nodes == 3 and config.run_name.endswith("-sim")
    assert (Paths.resolve().data_dir / "backbones").is_dir()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--clients", "0"], "--clients must be at least 1"),
        (["-c", "lr-schedule=linear"], "lr-schedule must be one of"),
        (["-c", "t-mult=1.5"], "t-mult must be int"),
        (["--dataset", "/no/such/dataset"], "no such path"),
    ],
)
def test_bad_sim_input_is_one_line_and_exit_2(cli, args, message):
    result = cli("sim", *args)
    assert result.code == 2
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message", "hint"),
    [
        (["-c", "trim-fraction=0.5"], "run-config trim-fraction must be < 0.5, got 0.5", "trimmed-mean"),
        (["-c", "clip-update-norm=-1"], "run-config clip-update-norm must be >= 0, got -1.0", "L2 norm"),
        (["-c", "straggler-grace-s=-1"], "run-config straggler-grace-s must be >= 0, got -1.0", "min-replies"),
        (["-n", "3", "-c", "aggregation='krum'"], "needs 5 nodes a round; min-available-nodes 3", "--clients 5"),
        (
            ["-n", "6", "-c", "fraction-train=0.5", "-c", "aggregation='multi-krum'"],
            "needs 5 nodes a round; min-available-nodes 6 x fraction-train 0.5 samples 3",
            "--clients 10",
        ),
        (["-n", "3", "-c", "min-replies=4"], "min-replies 4 is above the 3 node(s) a round samples", "min-replies=3"),
        (
            ["-n", "4", "-c", "fraction-train=0.5", "-c", "min-replies=3"],
            "min-replies 3 is above the 2 node(s) a round samples (4 clients x fraction-train 0.5)",
            "min-replies=2 or fewer",
        ),
    ],
)
def test_bad_robust_aggregation_input_is_one_line_a_hint_and_exit_2_before_anything_starts(
    cli, monkeypatch, args, message, hint
):
    """Issue 14's bad input: refused while the run config is resolved, before a SuperLink, a
    sample dataset or round 1."""
    from zk0cli.services import simulation

    def never(*_args, **_kwargs):
        raise AssertionError("the simulation started")

    monkeypatch.setattr(simulation, "sample_datasets", never)
    result = cli("--json", "sim", *args)
    assert result.code == 2, result.stderr
    refused = result.json()
    assert message in refused["error"] and "\n" not in refused["error"]
    assert hint in refused["hint"] and "Traceback" not in result.stderr


def test_sim_warns_once_that_a_trimmed_mean_that_cuts_nobody_is_the_plain_mean(zk0_home):
    from zk0cli.core.paths import Paths
    from zk0cli.services import simulation

    said: list[str] = []
    request = simulation.SimRequest(
        clients=3, rounds=1, run_config={"aggregation": "trimmed-mean", "datasets": "local:/data/a"}
    )
    simulation.resolve_config(request, Paths.resolve(), say=said.append)
    assert said == [
        "aggregation: trimmed-mean with trim-fraction 0.1 cuts no node of the 3 a round samples "
        "(3 clients x fraction-train 1): it is the plain mean; trim-fraction=0.34 cuts one node from each end"
    ]
    said.clear()
    request.run_config["trim-fraction"] = 0.34
    simulation.resolve_config(request, Paths.resolve(), say=said.append)
    assert said == []


@pytest.mark.parametrize("command", ["sim", "run"])
def test_list_keys_names_every_run_config_key(cli, command):
    result = cli("--json", command, "--list-keys")
    assert result.code == 0
    keys = [row["key"] for row in result.json()]
    assert keys == list(RunConfig().to_flwr()) and all(row["doc"] for row in result.json())


def test_interrupted_sim_stops_everything_it_started(sim_env, fl_datasets, tmp_path):
    import signal
    import time

    import psutil

    env = {**sim_env, "ZK0_HOME": str(tmp_path / "zk0home")}
    args = [str(BIN / "zk0"), "--json", "sim", "--rounds", "50"]
    args += [item for uri in fl_datasets for item in ("--dataset", f"local:{uri}")]
    args += [item for key, value in SIM_CONFIG.items() for item in ("-c", f"{key}={json.dumps(value)}")]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = tmp_path / "zk0home" / "data" / "runs"
    deadline = time.monotonic() + 300
    # the server app's first status: the Simulation Engine (Ray and its client actors) is up by then
    while not list(runs.glob("*/status.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(1)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    tree = psutil.Process(proc.pid).children(recursive=True)
    assert any("flower-superlink" in " ".join(p.cmdline()) for p in tree)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert alive == []
    status = json.loads(next(runs.glob("*/status.json")).read_text())
    assert status["state"] == "interrupted" and "--from-record" in status["hint"]


def test_server_app_failure_is_one_line_with_its_reason(sim_env, fl_datasets, tmp_path):
    env = {**sim_env, "ZK0_HOME": str(tmp_path / "zk0home")}
    args = ["sim", "--rounds", "1", "--timeout", "400", "-c", "policy='/no/such/checkpoint'"]
    args += [item for uri in fl_datasets for item in ("--dataset", f"local:{uri}")]
    done = zk0(env, *args, timeout=450)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "the simulation failed: no checkpoint directory at /no/such/checkpoint" in done.stderr
    assert "Traceback" not in done.stderr
