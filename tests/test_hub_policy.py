"""`policy=<org>/<name>`: a SmolVLA checkpoint and its VLM served as model repos by a real Hub
API on loopback (olah), loaded through `from_pretrained`'s Hub path by the server and by every
node of a `zk0 sim` federation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from zk0_process import process_env, zk0

pytestmark = pytest.mark.slow

POLICY, VLM = "acme/tiny-smolvla", "acme/tiny-vlm"


@pytest.fixture(scope="module")
def hub_policy(olah_hub, fl_datasets, tmp_path_factory):
    """A tiny SmolVLA saved with save_pretrained, its config naming the VLM by its Hub id."""
    from zk0cli.datasets.uri import open_metadata, parse_uri
    from zk0cli.policy.build import PolicySpec, build_policy

    root = tmp_path_factory.mktemp("hub-policy")
    spec = PolicySpec(tiny=True, chunk_size=10, device="cpu", backbone_dir=root / "backbones")
    built = build_policy(spec, open_metadata(parse_uri(f"local:{fl_datasets[0]}")))
    vlm_dir = Path(built.policy.config.vlm_model_name)
    built.policy.config.vlm_model_name = VLM
    built.policy.save_pretrained(root / "checkpoint")
    olah_hub.add_model(VLM, vlm_dir)
    olah_hub.add_model(POLICY, root / "checkpoint")
    return olah_hub


def test_a_federation_loads_its_policy_from_a_hub(hub_policy, fl_datasets, tmp_path):
    env = process_env(tmp_path / "home", hub_policy.client_env(tmp_path / "hf"))
    args = ["--json", "sim", "--clients", "2", "--rounds", "1", "--timeout", "500"]
    args += [item for root in fl_datasets for item in ("--dataset", f"local:{root}")]
    for setting in (f"policy={POLICY}", "chunk-size=10", "local-steps=2", "batch-size=2", "eval-batches=1"):
        args += ["-c", setting]
    done = zk0(env, *args, timeout=560)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = Path(json.loads(done.stdout)["run_dir"])
    assert json.loads((run_dir / "config.json").read_text())["run_config"]["policy"] == POLICY
    cached = {p.name for p in (tmp_path / "hf" / "hub").iterdir()}
    assert {"models--acme--tiny-smolvla", "models--acme--tiny-vlm"} <= cached  # fetched through the Hub API
    saved = json.loads((run_dir / "final" / "config.json").read_text())
    assert saved["vlm_model_name"] == VLM  # a Hub VLM id is kept as it is (no local copy)


def test_a_hub_policy_offline_and_not_cached_is_one_line_exit_3(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    done = cli("sim", "--clients", "1", "--rounds", "1", "-c", f"policy={POLICY}", "--timeout", "120")
    assert done.code == 3, done.stderr[-2000:]
    assert f"cannot fetch {POLICY}" in done.stderr and "hint:" in done.stderr
