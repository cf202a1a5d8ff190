"""`zk0 export`: the node's kept global + its own stats -> a LeRobot policy directory that
LeRobot's own loaders read and that acts in the node's units. (The same after a real `zk0 sim`
is in test_fl_sim.)"""

from __future__ import annotations

import json
from importlib.metadata import version

import numpy as np
import pytest
import torch

from zk0cli.core.paths import Paths
from zk0cli.fl import integrity, received
from zk0cli.fl.run_config import RunConfig

RUN_ID = 4242424242
RUN_CONFIG = {"policy": "tiny", "chunk-size": 5, "seed": 7, "device": "cpu"}


@pytest.fixture
def node_dataset(fl_datasets):
    return f"local:{fl_datasets[1]}"


def trained_weights(dataset: str, shift: float = 0.25):
    """The node's policy as the run builds it, and trainable weights moved away from the
    initial ones (a global that is not just the seeded start)."""
    from zk0cli.datasets.uri import open_metadata, parse_uri
    from zk0cli.policy.build import build_policy, policy_features
    from zk0cli.policy.trainable import get_trainable

    built = build_policy(RunConfig.from_mapping(RUN_CONFIG).policy_spec(), open_metadata(parse_uri(dataset)))
    weights = {name: (t + shift).numpy() for name, t in get_trainable(built.policy).items()}
    return built, weights, policy_features(built.config)


def keep(dataset: str, weights, features, *, run_id: int = RUN_ID, server_round: int = 3, **run_config) -> None:
    received.keep(
        Paths.resolve(),
        run_id,
        server_round,
        weights,
        sha256=integrity.digest(integrity.to_record(weights)),
        run_config={**RUN_CONFIG, **run_config},
        dataset_uri=dataset,
        dataset_fingerprint="f" * 64,
        features=features,
    )


def test_export_loads_with_lerobot_and_acts_in_the_node_units(cli, node_dataset, fl_datasets, tmp_path):
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla import SmolVLAPolicy

    from zk0cli.datasets.uri import open_metadata, parse_uri

    _, weights, features = trained_weights(node_dataset)
    keep(node_dataset, weights, features)
    out_dir = tmp_path / "policy"
    done = cli("--json", "export", str(RUN_ID)[:6], "-o", str(out_dir))
    assert done.code == 0, done.stderr
    summary = done.json()
    assert summary["server_round"] == 3 and summary["normalised_by"]["dataset"] == node_dataset
    assert summary["older_than_run"] is None and "not the run's last round" not in done.stderr
    assert json.loads((out_dir / "zk0_export.json").read_text())["global_sha256"] == summary["global_sha256"]
    card = (out_dir / "README.md").read_text()
    assert f"Global weights of run {RUN_ID}, round 3, exported by zk0 on the node that\nowns `{node_dataset}`" in card
    assert f"| {node_dataset} | `{'f' * 16}` |" in card  # the run's datasets this node knows, by fingerprint
    fingerprint = summary["normalised_by"]["fingerprint"]
    assert len(fingerprint) == 64 and f"(fingerprint\n`{fingerprint[:16]}`)" in card
    assert f"`{summary['global_sha256'][:16]}`" in card and "Not the run's last round" not in card
    versions = {name: version(dist) for name, dist in (("zk0", "zk0"), ("lerobot", "lerobot"), ("flwr", "flwr"))}
    assert all(f"{name} {number}" in card for name, number in versions.items()), card
    assert f"--policy.path={out_dir}" in card and "lerobot-rollout" in card

    policy = SmolVLAPolicy.from_pretrained(out_dir)
    preprocessor, postprocessor = make_pre_post_processors(policy.config, pretrained_path=str(out_dir))
    exported = dict(policy.named_parameters())
    for name, value in weights.items():
        assert torch.equal(exported[name].detach(), torch.from_numpy(value)), name

    meta = open_metadata(parse_uri(node_dataset))
    server_meta = open_metadata(parse_uri(f"local:{fl_datasets[0]}"))
    assert not np.allclose(meta.stats["action"]["mean"], server_meta.stats["action"]["mean"])
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    frame = LeRobotDataset(meta.repo_id, root=meta.root)[0]
    batch = {key: value.unsqueeze(0) if isinstance(value, torch.Tensor) else [value] for key, value in frame.items()}
    policy.eval()
    with torch.no_grad():
        normalised = policy.select_action(preprocessor(batch))
    action = postprocessor(normalised)
    assert action.shape == (1, meta.features["action"]["shape"][0]) and torch.isfinite(action).all()
    mean = torch.as_tensor(meta.stats["action"]["mean"], dtype=torch.float32)
    std = torch.as_tensor(meta.stats["action"]["std"], dtype=torch.float32)
    torch.testing.assert_close(action, normalised.cpu() * std + mean, rtol=1e-4, atol=1e-4)  # the node's units


def test_a_global_older_than_the_run_says_so_in_the_output_and_the_card(cli, node_dataset, tmp_path):
    _, weights, features = trained_weights(node_dataset)
    keep(node_dataset, weights, features, server_round=4, **{"num-server-rounds": 5, "fraction-evaluate": 0.0})
    done = cli("--json", "export", str(RUN_ID), "-o", str(tmp_path / "policy"))
    assert done.code == 0, done.stderr
    older = done.json()["older_than_run"]
    assert older.startswith("round 4 is the last global this node received, but the run was set for 5 rounds")
    assert "fraction-evaluate 0" in older and "final/" in older
    assert f"not the run's last round: {older}" in " ".join(done.stderr.split())  # as rich wraps it
    card = (tmp_path / "policy" / "README.md").read_text()
    assert f"run {RUN_ID}, round 4 of 5," in card and f"> **Not the run's last round.** {older}." in card


def test_kept_global_is_digest_checked_and_old_runs_are_forgotten(node_dataset):
    weights = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "b.bias": np.ones(4, dtype=np.float32)}
    for run_id in range(1, received.KEEP_RUNS + 2):
        keep(node_dataset, weights, {}, run_id=run_id)
    assert received.held_runs(Paths.resolve()) == list(range(2, received.KEEP_RUNS + 2))  # run 1 dropped
    back = received.read(Paths.resolve(), 2)
    assert list(back.weights) == ["a.weight", "b.bias"]
    assert np.array_equal(back.weights["a.weight"], weights["a.weight"])
    assert not received.keep(  # the same global again (a simulation's other client): not rewritten
        Paths.resolve(),
        2,
        3,
        weights,
        sha256=integrity.digest(integrity.to_record(weights)),
        run_config={},
        dataset_uri=node_dataset,
        dataset_fingerprint="",
        features={},
    )
    path = received.received_dir(Paths.resolve()) / "2" / received.WEIGHTS
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match="fails its digest check"):
        received.read(Paths.resolve(), 2)


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        ("nothing", ["123"], "holds no global weights of run '123'"),
        ("kept", [str(RUN_ID), "--round", "2"], "global of round 3, not 2"),
        ("full-out", [str(RUN_ID)], "exists and is not empty"),
        ("plain-dir", ["{tmp}"], "neither a checkpoint"),
        ("record", ["{tmp}"], "has no checkpoint of round 4"),
        ("record-here", ["20261203-0800"], "run record 20261203-080000-0001-run has no checkpoint of round 4"),
    ],
)
def test_bad_export_input_is_one_line_and_exit_2(cli, node_dataset, tmp_path, make, args, message):
    out_dir = tmp_path / "out"
    if make in ("kept", "full-out"):
        keep(node_dataset, {"w": np.zeros(2, dtype=np.float32)}, {})
    if make == "full-out":
        out_dir.mkdir()
        (out_dir / "something").write_text("x")
    if make == "plain-dir":
        (tmp_path / "plain").mkdir()
    if make == "record":
        (tmp_path / "record" / "checkpoints" / "round_0002").mkdir(parents=True)
    if make == "record-here":  # a server's record, named as `zk0 runs` shows it (a unique prefix)
        (Paths.resolve().runs_dir / "20261203-080000-0001-run" / "checkpoints" / "round_0002").mkdir(parents=True)
    target = {"plain-dir": tmp_path / "plain", "record": tmp_path / "record"}.get(make, tmp_path)
    extra = ["--round", "4"] if make.startswith("record") else []
    done = cli("export", *[a.replace("{tmp}", str(target)) for a in args], *extra, "-o", str(out_dir))
    assert done.code == 2, done.stderr
    assert message in done.stderr and "hint:" in done.stderr


def test_export_refuses_a_dataset_with_other_features(cli, node_dataset, tmp_path):
    _, weights, features = trained_weights(node_dataset, shift=0.0)
    keep(node_dataset, weights, {**features, "observation.state": [7]})  # trained on a 7-joint arm
    done = cli("export", str(RUN_ID), "-o", str(tmp_path / "out"), "--dataset", node_dataset)
    assert done.code == 2
    assert "features do not match" in done.stderr and "observation.state [6] vs [7]" in done.stderr


@pytest.mark.slow
@pytest.mark.usefixtures("torch_one_thread")
def test_without_federated_evaluation_the_kept_global_is_the_last_one_a_node_got(cli, tmp_path, fl_datasets):
    """fraction-evaluate 0: round 2's result never reaches a node, so what it holds is round 1's
    (carried by round 2's train message), labelled round 1 and equal to round 1's checkpoint; its
    export says it is not the run's last round. The server's run record exports any kept round
    (--round N) or its final one."""
    from loopback_grid import TINY_RUN, LoopbackGrid
    from safetensors.numpy import load_file

    from zk0cli.fl import client_app as zk0_client
    from zk0cli.fl.records import RunRecord
    from zk0cli.fl.server_app import run_federation

    values = {
        **TINY_RUN,
        "num-server-rounds": 2,
        "fraction-evaluate": 0.0,
        "checkpoint-interval": 1,
        "keep-last-checkpoints": 2,
        "keep-globals": 0,  # full fp32 down: the node holds the server's global exactly
        "datasets": " ".join(f"local:{d}" for d in fl_datasets),
        "runs-dir": str(tmp_path / "runs"),
        "run-name": "no-fed-eval",
    }
    config = RunConfig.from_mapping(values)
    nodes = [{"partition-id": i, "num-partitions": len(fl_datasets)} for i in range(len(fl_datasets))]
    record = RunRecord.create(tmp_path / "runs", config.run_name)
    run_federation(LoopbackGrid(zk0_client.app, nodes, config.to_flwr()), config, record)
    (run_id,) = received.held_runs(Paths.resolve())
    kept = received.read(Paths.resolve(), run_id)
    assert kept.server_round == 1
    checkpoint = load_file(str(record.checkpoint_dir(1) / "model.safetensors"))
    for name, value in kept.weights.items():
        assert np.array_equal(value, checkpoint[name]), name

    done = cli("--json", "export", str(run_id), "-o", str(tmp_path / "kept"))
    assert done.code == 0, done.stderr
    assert done.json()["server_round"] == 1 and "fraction-evaluate 0" in done.json()["older_than_run"]
    assert "Not the run's last round" in (tmp_path / "kept" / "README.md").read_text()

    node_dataset = f"local:{fl_datasets[1]}"
    fingerprints = json.loads((record.root / "config.json").read_text())["dataset_fingerprints"]
    for server_round in (1, None):  # a kept round of the server's record, then its final one
        out_dir = tmp_path / f"record-{server_round}"
        chosen = ["--round", str(server_round)] if server_round else []
        done = cli("--json", "export", str(record.root), *chosen, "--dataset", node_dataset, "-o", str(out_dir))
        assert done.code == 0, done.stderr
        exported, expected = server_round or 2, record.checkpoint_dir(server_round or 2)
        assert done.json()["server_round"] == exported and done.json()["older_than_run"] is None
        assert done.json()["from"] == str(expected.resolve())
        weights = load_file(str(out_dir / "model.safetensors"))
        for name, value in load_file(str(expected / "model.safetensors")).items():
            assert np.array_equal(weights[name], value), name
        card = (out_dir / "README.md").read_text()
        assert f"round {exported} of 2," in card and "Not the run's last round" not in card
        assert len(fingerprints) == 2 and all(f"| {uri} | `{fp[:16]}` |" in card for uri, fp in fingerprints.items())

    done = cli("export", str(record.checkpoint_dir(1)), "--round", "2", "-o", str(tmp_path / "wrong"))
    assert done.code == 2 and "is the checkpoint of round 1, not 2" in done.stderr
