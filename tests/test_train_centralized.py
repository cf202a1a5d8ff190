"""zk0 train: the centralized baseline matched to a real 3-client federated run, compared, reproduced.

The federated run is zk0's real ServerApp logic (strategy, server evaluation, record) and the real
ClientApp on the in-process loopback Grid; everything runs on CPU with the tiny backbone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from zk0cli.core.errors import ExitCode
from zk0cli.core.paths import Paths

torch = pytest.importorskip("torch")

TIMING_KEYS = {"seconds", "seconds_avg"}  # wall-clock: the only values allowed to differ between runs


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Offline Hub, private caches and one torch thread for the module's runs."""
    root = tmp_path_factory.mktemp("central")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a small shared CPU several threads per process thrash
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_HOME", str(root / "hf"))
        patch.setenv("HF_LEROBOT_HOME", str(root / "hf" / "lerobot"))
        patch.setenv("ZK0_HOME", str(root / "home"))
        yield root
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(env) -> dict[str, str]:
    """Two training datasets of different tasks and a held-out one (LeRobot's writer, 20-frame episodes)."""
    from zk0cli.datasets.sample import write_sample

    small = dict(frames_per_episode=20, image_size=32)
    return {
        "pick": f"local:{write_sample(env / 'data' / 'pick', task='pick', episodes=3, seed=0, **small)}",
        "stack": f"local:{write_sample(env / 'data' / 'stack', task='stack', episodes=2, seed=1, **small)}",
        "heldout": f"local:{write_sample(env / 'data' / 'heldout', task='pick', episodes=1, seed=9, **small)}",
    }


@pytest.fixture(scope="module")
def federated(env, data) -> Path:
    """3 clients (pick split in two, stack), 2 rounds of 2 local steps, one client-held-out episode each."""
    from loopback_grid import LoopbackGrid

    from zk0cli.fl.client_app import app as client_app
    from zk0cli.fl.records import RunRecord
    from zk0cli.fl.run_config import RunConfig
    from zk0cli.fl.server_app import run_federation

    config = RunConfig.from_mapping(
        {
            "policy": "tiny",
            "num-server-rounds": 2,
            "min-available-nodes": 3,
            "local-steps": 2,
            "batch-size": 2,
            "chunk-size": 10,
            "device": "cpu",
            "datasets": f"{data['pick']} {data['stack']}",
            "eval-datasets": data["heldout"],
            "client-eval-episodes": 1,
            "eval-batches": 1,
            "video-frequency": 10,
            "seed": 42,
            "runs-dir": str(env / "runs"),
            "run-name": "fed",
        }
    )
    nodes = [{"partition-id": client, "num-partitions": 3} for client in range(3)]
    record = RunRecord.create(env / "runs", "fed")
    run_federation(LoopbackGrid(client_app, nodes, config.to_flwr()), config, record)
    record.write_status("completed", rounds=config.num_server_rounds)
    return record.root


@pytest.fixture(scope="module")
def centralized(env, federated, capsys_module) -> Path:
    result = capsys_module("train", "--match-run", str(federated), "--json")
    assert result.code == 0, result.stderr
    return Path(result.json()["record"])


@pytest.fixture(scope="module")
def capsys_module(env):
    """The `cli` fixture for module-scoped fixtures: runs `zk0 ARGS` in-process, captures its output."""
    import contextlib
    import io

    from conftest import CliResult

    from zk0cli.cli.app import main

    def run(*args: str) -> CliResult:
        stdout, stderr = io.StringIO(), io.StringIO()
        code = 0
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 0
        return CliResult(code, stdout.getvalue(), stderr.getvalue())

    return run


def read(root: Path, name: str):
    return json.loads((root / name).read_text())


def without_timing(value):
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


@pytest.mark.slow
def test_matched_centralized_run_then_compare_end_to_end(federated, centralized, data, capsys_module, tmp_path):
    config = read(centralized, "config.json")
    assert config["mode"] == "centralized" and config["matched_run"]["run_id"] == "fed"
    assert config["steps_per_round"] == [6, 6]  # 3 accepted clients x 2 local steps, per round
    assert config["eval_rounds"] == [0, 1, 2]
    pooled = {p["name"]: (p["episodes"], p["frames"]) for p in config["participants"]}
    assert pooled == {"pick": ([0, 1], 40), "stack": ([0], 20)}  # every client's training episodes, none held out
    assert config["run_config"]["proximal-mu"] == 0.0 and config["run_config"]["seed"] == 42
    assert set(config["dataset_fingerprints"]) == set(data.values())
    # same starting weights and the same deterministic evaluation: round 0 is the same number
    assert (
        read(centralized, "round_0_server_eval.json")["server_eval"]
        == read(federated, "round_0_server_eval.json")["server_eval"]
    )
    for name in ("plots/losses.png", "plots/lr_mu.png", "final/config.json", "videos/round_0002.mp4"):
        assert (centralized / name).exists(), name
    round_1 = read(centralized, "round_1_server_eval.json")
    assert round_1["clients"]["each"][0]["metrics"]["steps"] == 6 and round_1["plan"]["lr"]["value"] == 1e-4

    result = capsys_module("compare", str(federated), str(centralized), "--out", str(tmp_path / "cmp"), "--json")
    assert result.code == 0, result.stderr
    compared = result.json()
    for arm, root in zip(compared["arms"], (federated, centralized)):
        history = read(root, "policy_loss_history.json")
        (run,) = arm["runs"]
        assert (
            run["final_loss"] == history[-1]["policy_loss"] and run["final_action_error"] == history[-1]["action_error"]
        )
        assert run["best_loss"] == min(h["policy_loss"] for h in history)
        assert run["steps"] == 12
    fed_loss, cen_loss = (arm["runs"][0]["final_loss"] for arm in compared["arms"])
    gap = next(g for g in compared["gaps"] if g["metric"] == "final_loss")
    assert gap["percent"] == pytest.approx(100 * (fed_loss - cen_loss) / cen_loss)

    report = capsys_module("report", str(federated), "--out", str(tmp_path / "report"), "--json")
    assert report.code == 0, report.stderr
    assert "pick-p1" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.slow
def test_each_node_dataset_alone_is_a_third_arm_of_the_comparison(
    federated, centralized, data, capsys_module, tmp_path
):
    """Issue 17: `zk0 train --match-run RUN --local-only`: one model per node dataset, its own
    training episodes only, the steps its accepted updates brought each round, the same evals."""
    result = capsys_module("train", "--match-run", str(federated), "--local-only", "--json")
    assert result.code == 0, result.stderr
    runs = {run["datasets"][0]: run for run in result.json()["runs"]}
    assert set(runs) == {"pick", "stack"} and all(run["mode"] == "local-only" for run in runs.values())
    pick, stack = (read(Path(runs[name]["record"]), "config.json") for name in ("pick", "stack"))
    assert pick["steps_per_round"] == [4, 4] and stack["steps_per_round"] == [2, 2]  # pick had two clients
    assert [p["episodes"] for p in pick["participants"]] == [[0, 1]] and pick["matched_run"]["run_id"] == "fed"
    assert pick["run_config"]["eval-datasets"] == data["heldout"] and pick["eval_rounds"] == [0, 1, 2]
    assert (
        read(Path(runs["stack"]["record"]), "round_0_server_eval.json")["server_eval"]
        == read(federated, "round_0_server_eval.json")["server_eval"]
    )

    arms = [str(federated), str(centralized), runs["pick"]["record"], runs["stack"]["record"]]
    compared = capsys_module("compare", *arms, "--out", str(tmp_path / "cmp"), "--json")
    assert compared.code == 0, compared.stderr
    result = compared.json()
    assert [arm["mode"] for arm in result["arms"]] == ["federated", "centralized", "local-only", "local-only"]
    final = {arm["label"]: arm["runs"][0]["final_loss"] for arm in result["arms"]}
    for name in ("pick", "stack"):
        local = runs[name]["run_id"]
        gap = next(g for g in result["gaps"] if g["reference"] == local and g["metric"] == "final_loss")
        assert gap["arm"] == "fed" and gap["percent"] == pytest.approx(100 * (final["fed"] / final[local] - 1))
        assert gap["text"].startswith("federated fed is") and f"local-only {local}" in gap["text"]

    report = capsys_module("report", str(federated), "--out", str(tmp_path / "report"), "--json")
    assert report.code == 0, report.stderr
    text = (tmp_path / "report" / "report.md").read_text().split("## Each node alone", 1)[1].split("## ", 1)[0]
    for name in ("pick", "stack"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        assert runs[name]["run_id"] in row and ("% lower" in row or "% higher" in row)

    refused = capsys_module("train", "--match-run", str(centralized), "--local-only")
    assert refused.code == ExitCode.BAD_INPUT and "not a federated one" in refused.stderr
    mismatch = capsys_module("train", "--match-run", str(federated), "--local-only", "--dataset", data["heldout"])
    assert mismatch.code == ExitCode.BAD_INPUT and "fingerprints differ" in mismatch.stderr
    assert all(len(r.stderr.strip().splitlines()) <= 3 for r in (refused, mismatch))


@pytest.mark.slow
def test_same_seed_gives_identical_round_records(centralized, capsys_module, env):
    result = capsys_module("train", "--from-record", str(centralized), "--json")
    assert result.code == 0, result.stderr
    again = Path(result.json()["record"])
    assert again != centralized and read(again, "config.json")["run_config"]["seed"] == 42
    for server_round in (0, 1, 2):
        name = f"round_{server_round}_server_eval.json"
        assert without_timing(read(again, name)) == without_timing(read(centralized, name)), name
    assert (again / "final" / "model.safetensors").read_bytes() == (
        centralized / "final" / "model.safetensors"
    ).read_bytes()

    other = capsys_module("train", "--from-record", str(centralized), "--seed", "7")  # what a person reads
    assert other.code == 0, other.stderr
    line = " ".join(other.stdout.split())  # rich wraps at 80 columns
    found = re.search(
        r"centralized run (\S+): 12 steps, final server eval loss \S+ \(action error \S+ action units\)", line
    )
    assert found, other.stdout
    changed = Paths.resolve().runs_dir / found.group(1)  # a reproduced run goes to this ZK0_HOME's runs
    assert read(changed, "config.json")["run_config"]["seed"] == 7
    assert (
        read(changed, "round_2_server_eval.json")["server_eval"]
        != read(centralized, "round_2_server_eval.json")["server_eval"]
    )


@pytest.mark.slow
def test_sim_from_record_resubmits_the_recorded_federation(federated, data, env, tmp_path):
    """What `zk0 sim --from-record` submits (running it on Ray is `zk0 sim`'s own test's business)."""
    from zk0cli.core.errors import Zk0Error
    from zk0cli.services.report import sim_request_from_record

    recorded = read(federated, "config.json")["run_config"]
    request = sim_request_from_record(federated, overrides={"seed": 7}, runs_dir=tmp_path)
    assert (request.clients, request.rounds) == (3, 2)
    assert request.run_config == {
        **recorded,
        "seed": 7,
        "runs-dir": str(tmp_path),
        "run-name": request.run_config["run-name"],
    }
    assert request.run_config["run-name"] != "fed"
    info = Path(data["stack"].removeprefix("local:")) / "meta" / "info.json"
    original = info.read_bytes()
    info.write_bytes(original + b"\n")  # still a valid dataset, but not the content the record names
    try:
        with pytest.raises(Zk0Error, match="is not the one run fed used"):
            sim_request_from_record(federated)
    finally:
        info.write_bytes(original)


def test_steps_are_spread_over_the_rounds_and_held_out_episodes_stay_out(data):
    from zk0cli.services.train import plan_centralized

    plan = plan_centralized(
        datasets=[data["pick"], data["stack"], data["pick"]],
        steps=5,
        overrides={"num-server-rounds": 2, "client-eval-episodes": 1, "eval-frequency": 5},
    )
    assert plan.steps_per_round == [3, 2] and plan.eval_rounds == [0, 2]
    assert [(t.uri, t.episodes, t.frames) for t in plan.training] == [
        (data["pick"], [0, 1], 40),
        (data["stack"], [0], 20),
    ]
    assert plan.config.proximal_mu == 0.0 and plan.config.mu_min == 0.0
    few = plan_centralized(datasets=[data["stack"]], steps=2, overrides={"num-server-rounds": 4})
    assert few.steps_per_round == [1, 1] and few.config.num_server_rounds == 2 and few.eval_rounds == [0, 1, 2]


def test_bad_inputs_are_one_line_with_a_hint(cli, zk0_home, tmp_path):
    (zk0_home / "data" / "runs" / "empty-run").mkdir(parents=True)
    cases = [
        (["train", "--match-run", "no-such-run"], "no run 'no-such-run'"),
        (["train", "--match-run", "empty-run"], "incomplete: config.json, policy_loss_history.json missing"),
        (["train", "--steps", "0", "--dataset", "local:/nowhere"], "--steps must be >= 1"),
        (["train", "--steps", "5", "--match-run", "empty-run"], "--steps and --match-run exclude each other"),
        (["train", "--from-record", str(tmp_path), "--steps", "3"], "only --seed may change it"),
        (["train", "--set", "no-such-key=1", "--steps", "3"], "unknown run-config key 'no-such-key'"),
        (["train", "--local-only", "--steps", "3"], "--local-only trains each node of a federated run alone"),
    ]
    for args, message in cases:
        result = cli(*args)
        assert result.code == ExitCode.BAD_INPUT, (args, result.stderr)
        assert message in result.stderr and "hint:" in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
