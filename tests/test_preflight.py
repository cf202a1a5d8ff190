"""`zk0 run` checks a run before submitting it; `zk0 run --dry-run` shows those checks alone."""

from __future__ import annotations

import pytest

from zk0cli.core.checks import Status
from zk0cli.core.errors import ExitCode, Zk0Error
from zk0cli.core.paths import Paths
from zk0cli.fl.run_config import RunConfig
from zk0cli.services import preflight


def test_dry_run_lists_every_check_submits_nothing_and_exits_as_the_run_would(cli, zk0_home, sample_dataset):
    result = cli("run", "--dry-run", "--json", "--set", "policy=tiny", "--set", f"eval-datasets=local:{sample_dataset}")
    assert result.code == ExitCode.UNREACHABLE  # no server: what `zk0 run` itself would exit with
    checks = {c["name"]: c for c in result.json()["checks"]}
    assert checks["server"]["status"] == "fail" and "zk0 server serve" in checks["server"]["fix"]
    assert "nodes" not in checks  # nobody to ask without a server
    assert checks["policy"]["status"] == "ok" and "nothing to download" in checks["policy"]["detail"]
    assert checks[f"held-out local:{sample_dataset}"]["detail"].startswith("3 episodes, 120 frames")
    assert checks["server eval"]["status"] == "ok"
    assert not (zk0_home / "state" / "run-configs").exists()  # nothing was submitted


def test_config_run_defaults_are_what_the_dry_run_checks(cli, sample_dataset):
    assert cli("config", "set", "run.policy", "tiny").code == 0
    assert cli("config", "set", "run.local-steps", "7").code == 0
    result = cli("run", "--dry-run", "--json", "--set", "local-steps=9")
    assert result.json()["run_config"]["policy"] == "tiny"
    assert result.json()["run_config"]["local-steps"] == 9  # --set overrides the config's default
    warned = {c["name"]: c for c in result.json()["checks"]}["server eval"]
    assert warned["status"] == "warn" and "zk0 config set run.eval-datasets" in warned["fix"]


def test_an_offline_hub_policy_or_dataset_fails_in_seconds_with_exit_3_and_a_local_hint():
    """HF_HUB_OFFLINE=1 (every test): lerobot/smolvla_base is not in the empty cache."""
    config = RunConfig.from_mapping({"eval-datasets": "hf:org/heldout"})
    checks = {c.name: c for c in preflight.run_preflight(Paths.resolve(), config)}
    policy = checks["policy"]
    assert policy.status is Status.FAIL and policy.data["exit_code"] == ExitCode.UNREACHABLE
    assert "lerobot/smolvla_base" in policy.detail and policy.fix == preflight.POLICY_HINT
    dataset = checks["held-out hf:org/heldout"]
    assert dataset.status is Status.FAIL and dataset.data["exit_code"] == ExitCode.UNREACHABLE
    assert "local:PATH" in dataset.fix


def test_a_resumed_run_has_no_dry_run(cli):
    refused = cli("--json", "run", "--dry-run", "--resume", "123")
    assert refused.code == 2 and "drop --resume" in refused.json()["hint"]


@pytest.fixture
def online_nodes(monkeypatch):
    """A running server with ``count`` online nodes (the first ``quarantined`` of them quarantined)."""
    from zk0cli.services import server

    def have(count: int, quarantined: int = 0) -> None:
        nodes = [
            {
                "node_id": str(1000 + i),
                "name": f"n{i}",
                "status": "online",
                "quarantined": {} if i >= quarantined else {"round": 1},
            }
            for i in range(count)
        ]
        monkeypatch.setattr(server, "require_running", lambda _paths: {})
        monkeypatch.setattr(server, "list_nodes", lambda _paths: nodes)

    return have


@pytest.mark.parametrize(
    ("online", "settings", "message", "hint"),
    [
        (3, ["trim-fraction=0.5"], "run-config trim-fraction must be < 0.5, got 0.5", "trimmed-mean"),
        (3, ["clip-update-norm=-1"], "run-config clip-update-norm must be >= 0, got -1.0", "L2 norm"),
        (3, ["straggler-grace-s=-1"], "run-config straggler-grace-s must be >= 0, got -1.0", "min-replies"),
        (
            9,
            ["aggregation=krum", "min-available-nodes=4"],
            "needs 5 nodes a round; min-available-nodes 4 x fraction-train 1 samples 4",
            "min-available-nodes=5",
        ),
        (
            3,
            ["min-replies=4"],
            "preflight: sampling: run-config min-replies 4 is above the 3 node(s) a round samples "
            "(3 online nodes out of quarantine x fraction-train 1)",
            "min-replies=3 or fewer",
        ),
        (
            1,
            ["min-replies=2", "min-available-nodes=3", "fraction-train=0.5"],
            "min-replies 2 is above the 1 node(s) a round samples (min-available-nodes 3 x fraction-train 0.5)",
            "min-replies=1 or fewer",
        ),
    ],
)
def test_bad_robust_aggregation_input_stops_zk0_run_with_one_line_a_hint_and_exit_2(
    cli, online_nodes, monkeypatch, online, settings, message, hint
):
    """Issue 14's bad input, before anything is submitted: values out of range and krum's node count
    in the run config, min-replies against what round 1 samples from the online nodes (or from the
    min-available-nodes it waits for)."""
    from zk0cli.services import runs

    def never(*_args, **_kwargs):
        raise AssertionError("submitted")

    monkeypatch.setattr(runs, "_submit", never)
    online_nodes(online)
    args = [item for pair in ["policy=tiny", *settings] for item in ("--set", pair)]
    result = cli("--json", "run", *args)
    assert result.code == ExitCode.BAD_INPUT, result.stderr
    refused = result.json()
    assert message in refused["error"] and "\n" not in refused["error"]
    assert hint in refused["hint"] and "Traceback" not in result.stderr


def test_a_round_samples_online_nodes_out_of_quarantine_and_a_trimmed_mean_that_cuts_nobody_warns(online_nodes):
    online_nodes(4, quarantined=1)
    config = RunConfig.from_mapping({"policy": "tiny", "aggregation": "trimmed-mean", "min-replies": 3})
    checks = {c.name: c for c in preflight.run_preflight(Paths.resolve(), config)}
    sampling = checks["sampling"]
    assert sampling.status is Status.WARN
    assert sampling.detail == (
        "trimmed-mean with trim-fraction 0.1 cuts no node of the 3 a round samples "
        "(3 online nodes out of quarantine x fraction-train 1): it is the plain mean"
    )
    assert sampling.fix == "trim-fraction=0.34 cuts one node from each end"
    assert preflight.first_failure(list(checks.values())) is None  # a warning, not a refusal
    assert any(line.startswith("sampling: trimmed-mean") for line in preflight.warnings(list(checks.values())))
    with pytest.raises(Zk0Error, match="min-replies 4 is above the 3"):
        preflight.require_passed(
            preflight.run_preflight(Paths.resolve(), RunConfig.from_mapping({"policy": "tiny", "min-replies": 4}))
        )
    fine = preflight.run_preflight(Paths.resolve(), RunConfig.from_mapping({"policy": "tiny", "fraction-train": 0.5}))
    assert {c.name: c.detail for c in fine}["sampling"] == (
        "1 node(s) a round (3 online nodes out of quarantine x fraction-train 0.5); aggregation mean"
    )
