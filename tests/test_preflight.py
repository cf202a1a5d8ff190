"""`zk0 run` checks a run before submitting it; `zk0 run --dry-run` shows those checks alone."""

from __future__ import annotations

from zk0cli.core.checks import Status
from zk0cli.core.errors import ExitCode
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
