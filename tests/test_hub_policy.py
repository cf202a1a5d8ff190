"""`policy=<org>/<name>[@revision]`: a SmolVLA checkpoint and its VLM served as model repos by a
real Hub API on loopback (olah), loaded through `from_pretrained`'s Hub path by the server and by
every node of a `zk0 sim` federation; a revision (tag or commit) picks that revision's config and
weights, and a VLM pinned to a revision reads that revision's files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from zk0_process import process_env, zk0

from zk0cli.core.errors import ExitCode

POLICY, VLM = "acme/tiny-smolvla", "acme/tiny-vlm"
SHIFT = 0.5  # main's trainable weights are v1's plus this


@pytest.fixture(scope="module")
def hub_policy(olah_hub, fl_datasets, tmp_path_factory):
    """A tiny SmolVLA saved with save_pretrained, its config naming the VLM by its Hub id: tag v1,
    then a commit on main with other trainable weights (and a later VLM commit). Returns the hub
    and the sum of v1's trainable weights (main's is that plus SHIFT per weight)."""
    from zk0cli.datasets.uri import open_metadata, parse_uri
    from zk0cli.policy.build import PolicySpec, build_policy
    from zk0cli.policy.trainable import get_trainable, set_trainable

    root = tmp_path_factory.mktemp("hub-policy")
    spec = PolicySpec(tiny=True, chunk_size=10, device="cpu", backbone_dir=root / "backbones")
    built = build_policy(spec, open_metadata(parse_uri(f"local:{fl_datasets[0]}")))
    vlm_dir = Path(built.policy.config.vlm_model_name)
    built.policy.config.vlm_model_name = VLM
    built.policy.save_pretrained(root / "v1")
    olah_hub.add_model(VLM, vlm_dir, tag="v1")
    olah_hub.add_model(POLICY, root / "v1", tag="v1")
    trainable = get_trainable(built.policy)
    set_trainable(built.policy, {name: t + SHIFT for name, t in trainable.items()})
    built.policy.save_pretrained(root / "main")
    olah_hub.commit_model(POLICY, root / "main")
    (root / "vlm-main").mkdir()
    (root / "vlm-main" / "NOTES.md").write_text("a later commit of the VLM\n")
    olah_hub.commit_model(VLM, root / "vlm-main")
    return (
        olah_hub,
        sum(float(t.double().sum()) for t in trainable.values()),
        sum(t.numel() for t in trainable.values()),
    )


BUILD = """
import json, sys
from zk0cli.core.errors import Zk0Error
from zk0cli.datasets.uri import open_metadata, parse_uri
from zk0cli.fl.run_config import RunConfig
from zk0cli.policy.build import build_policy
from zk0cli.policy.trainable import get_trainable

meta = open_metadata(parse_uri(sys.argv[1]))
for settings in json.loads(sys.argv[2]):
    try:
        built = build_policy(RunConfig.from_mapping(settings).policy_spec(), meta)
        weights = sum(float(t.double().sum()) for t in get_trainable(built.policy).values())
        print(json.dumps({"sum": weights, "vlm": built.config.vlm_model_name}))
    except Zk0Error as error:
        print(json.dumps({"code": int(error.code), "error": error.message, "hint": error.hint}))
"""


@pytest.mark.slow
def test_a_revision_picks_its_weights_and_a_pinned_vlm_its_files(hub_policy, fl_datasets, tmp_path):
    hub, v1_sum, count = hub_policy
    v1, vlm_v1 = hub.commit_of(POLICY, "v1"), hub.commit_of(VLM, "v1")
    base = {"chunk-size": 10, "device": "cpu"}
    cases = [
        {**base, "policy": f"{POLICY}@v1"},
        {**base, "policy": f"{POLICY}@{v1}", "vlm-model-name": f"{VLM}@v1"},
        {**base, "policy": POLICY},
        {**base, "policy": f"{POLICY}@no-such-tag"},
    ]
    env = process_env(tmp_path / "home", hub.client_env(tmp_path / "hf"))
    done = subprocess.run(
        [sys.executable, "-c", BUILD, f"local:{fl_datasets[0]}", json.dumps(cases)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    by_tag, by_commit, main, unknown = (json.loads(line) for line in done.stdout.splitlines())
    assert by_tag["sum"] == pytest.approx(v1_sum) and by_commit["sum"] == pytest.approx(v1_sum)
    assert main["sum"] == pytest.approx(v1_sum + SHIFT * count)  # no revision: main, the later commit
    assert by_tag["vlm"] == VLM  # the checkpoint's own VLM, by its Hub id
    assert Path(by_commit["vlm"]).parts[-2:] == ("snapshots", vlm_v1)  # that revision's files, not main's
    assert not (Path(by_commit["vlm"]) / "NOTES.md").exists()
    assert unknown["code"] == ExitCode.BAD_INPUT and f"{POLICY}@no-such-tag" in unknown["error"]
    assert "revision" in unknown["hint"] and "\n" not in unknown["error"]


@pytest.mark.slow
def test_a_federation_loads_its_policy_from_a_hub_at_a_revision(hub_policy, fl_datasets, tmp_path):
    hub = hub_policy[0]
    env = process_env(tmp_path / "home", hub.client_env(tmp_path / "hf"))
    args = ["--json", "sim", "--clients", "2", "--rounds", "1", "--timeout", "500"]
    args += [item for root in fl_datasets for item in ("--dataset", f"local:{root}")]
    for setting in (f"policy={POLICY}@v1", "chunk-size=10", "local-steps=2", "batch-size=2", "eval-batches=1"):
        args += ["-c", setting]
    done = zk0(env, *args, timeout=560)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = Path(json.loads(done.stdout)["run_dir"])
    assert json.loads((run_dir / "config.json").read_text())["run_config"]["policy"] == f"{POLICY}@v1"
    cached = {p.name for p in (tmp_path / "hf" / "hub").iterdir()}
    assert {"models--acme--tiny-smolvla", "models--acme--tiny-vlm"} <= cached  # fetched through the Hub API
    snapshots = {p.name for p in (tmp_path / "hf" / "hub" / "models--acme--tiny-smolvla" / "snapshots").iterdir()}
    assert snapshots == {hub.commit_of(POLICY, "v1")}  # server and nodes read v1, never main
    saved = json.loads((run_dir / "final" / "config.json").read_text())
    assert saved["vlm_model_name"] == VLM  # a Hub VLM id is kept as it is (no local copy)


@pytest.mark.slow
def test_a_hub_policy_offline_and_not_cached_is_one_line_exit_3(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    done = cli("sim", "--clients", "1", "--rounds", "1", "-c", f"policy={POLICY}", "--timeout", "120")
    assert done.code == 3, done.stderr[-2000:]
    assert f"cannot fetch {POLICY}" in done.stderr and "hint:" in done.stderr


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        (f"policy={POLICY}@", "policy"),
        (f"policy={POLICY}@v1@v2", "policy"),
        ("policy=tiny-smolvla@v1", "policy"),
        ("policy=acme/a/b@v1", "policy"),
        (f"vlm-model-name={VLM}@", "vlm-model-name"),
    ],
)
def test_a_malformed_revision_is_refused_before_flower_starts(cli, setting, key):
    done = cli("sim", "--clients", "1", "--rounds", "1", "-c", setting)
    assert done.code == ExitCode.BAD_INPUT, done.stderr
    assert f"run-config {key} '{setting.split('=', 1)[1]}'" in done.stderr and "<org>/<name>@<revision>" in done.stderr
    assert "hint:" in done.stderr and "Traceback" not in done.stderr


def test_a_revision_on_a_directory_is_refused(cli, tmp_path):
    done = cli("config", "set", "run.vlm-model-name", f"{tmp_path}@v1")
    assert done.code == ExitCode.BAD_INPUT and "<org>/<name>@<revision>" in done.stderr
