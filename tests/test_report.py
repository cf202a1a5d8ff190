"""zk0 report: the HTML and Markdown of a run record, checked in a real headless Chromium."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from zk0cli.core.errors import ExitCode
from zk0cli.fl import records, video

CHROMIUM = Path("/usr/bin/chromium")
JOINTS = ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos", "wrist_roll.pos", "gripper.pos"]


def write_record(
    runs_dir: Path,
    name: str,
    losses: list[float],
    *,
    mode: str = "federated",
    seed: int = 42,
    steps_per_client: int = 5,
    clients: int = 3,
    rejected_round: int | None = None,
    with_video: bool = False,
) -> Path:
    """A run record written with the record's own writers: round 0 and one round per loss after it.

    Server eval loss ``losses[r]`` at round r, action error 10x the loss; every round trains
    ``clients`` clients for ``steps_per_client`` steps (one "centralized" client in that mode).
    """
    run = records.RunRecord.create(runs_dir, name)
    extra = {"mode": mode} if mode != "federated" else {}
    run_config = {"seed": seed, "num-server-rounds": len(losses) - 1, "local-steps": steps_per_client}
    run.write_config(run_config, {"local:/data/heldout": "ab" * 32}, extra)
    nodes = ["centralized"] if mode == "centralized" else [str(1000 + i) for i in range(clients)]
    for server_round, loss in enumerate(losses):
        entry = {
            "round": server_round,
            "seconds": 1.5 * server_round,
            "server_eval": {
                "datasets": {"heldout": {"policy_loss": loss, "action_error": 10 * loss, "samples": 8}},
                "composite": {"policy_loss": loss, "action_error": 10 * loss},
            },
        }
        if server_round:
            each = [
                {
                    "node": node,
                    "dataset": f"pick-p{i}",
                    "samples": 4 * steps_per_client,
                    "dataset_fingerprint": f"{i:064x}",
                    "bytes_down": 1000,
                    "bytes_up": 500,
                    "metrics": {"loss": loss + 0.1 * i, "steps": steps_per_client, "fedprox_loss": 0.0},
                }
                for i, node in enumerate(nodes)
            ]
            entry.update(
                plan={"lr": {"value": 1e-4 / server_round, "why": ["cosine"]}, "mu": {"value": 0.01, "why": []}},
                clients={"aggregate": {"num_clients": len(each), "loss_avg": loss, "loss_std": 0.05}, "each": each},
                rejected=[{"node": "1009", "dataset": "bad", "reason": "digest mismatch"}]
                if server_round == rejected_round
                else [],
                failed=[],
            )
        if with_video and server_round == len(losses) - 1:
            entry["video"] = _video(run.root / "videos" / f"round_{server_round:04d}.mp4", server_round)
        if server_round == len(losses) - 1:
            run.save_checkpoint(
                server_round, lambda d, _final: (d / "model.safetensors").write_bytes(b"w"), keep_last=0
            )
        run.write_round(entry)
    run.write_status("completed", rounds=len(losses) - 1)
    return run.root


def _video(path: Path, server_round: int) -> dict:
    rng = np.random.default_rng(0)
    recorded = np.cumsum(rng.normal(size=(6, 6)), axis=0)
    return video.write_video(
        path,
        video.EpisodeTrajectories(
            frames=rng.integers(0, 255, size=(6, 32, 32, 3), dtype=np.uint8),
            predicted=recorded + 0.5,
            recorded=recorded,
            joint_names=JOINTS,
            fps=10,
            dataset="heldout",
            episode=0,
        ),
        server_round,
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A federated record with a rejected update and an evaluation video (written once: a few seconds)."""
    pytest.importorskip("av")
    return write_record(tmp_path_factory.mktemp("runs"), "fed-run", [2.0, 1.5, 1.2], rejected_round=2, with_video=True)


def test_report_holds_the_record(cli, run_dir):
    result = cli("report", str(run_dir), "--json")
    assert result.code == 0, result.stderr
    written = result.json()
    html_text = Path(written["html"]).read_text()
    markdown = Path(written["markdown"]).read_text()
    assert Path(written["html"]).parent == run_dir / "report"
    assert html_text.count("data:image/png;base64,") == 2 and "data:video/mp4;base64," in html_text
    assert written["videos_embedded"] == 1 and Path(written["videos"][0]).is_file()
    for text in (html_text, markdown):
        assert "digest mismatch" in text  # the rejected update, with its reason
        assert "1.2 (round 2)" in text and "1.2 (round 2)" in text  # final server loss
        assert "5.9 KiB down / 2.9 KiB up" in text  # 3 clients x 2 rounds x (1000 + 500) bytes
        assert str(run_dir / "checkpoints" / "round_0002") in text
        assert f"zk0 sim --from-record {run_dir}" in text
        assert "pick-p2" in text and "0.0001" in text  # participants, lr
        # the action error has its unit in the facts, the Rounds table and the video captions
        shown = html.unescape(text).replace("\\|", "|")  # as a reader sees it: HTML escapes, markdown cell pipes
        assert "12 (mean |action - recorded action| in the dataset's own action units)" in shown
        assert "action error (action units)" in shown and "action error 0.5 action units" in shown
        assert "4s over 2 rounds (2s per round)" in text  # 1.5 s + 3.0 s, one duration format
    assert "![losses](plots/losses.png)" in markdown and (run_dir / "report" / "plots" / "losses.png").is_file()
    rounds_table = markdown.split("## Rounds")[1].split("##")[0]
    assert "| 2 | 3 | 1 | 0 | 1.2 ± 0.05 | 1.2 | 12 |" in rounds_table and "| 30 |" in rounds_table  # steps
    assert "| time |" in rounds_table and "| 30 | 3s |" in rounds_table  # round 2's 3.0 s, as every duration


def test_report_out_dir_and_centralized_reproduce_line(cli, zk0_home, tmp_path):
    write_record(zk0_home / "data" / "runs", "cen", [2.0, 1.0], mode="centralized")
    result = cli("report", str(zk0_home / "data" / "runs" / "cen"), "--out", str(tmp_path / "r"), "--json")
    assert result.code == 0, result.stderr
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "zk0 train --from-record" in markdown and "every update was accepted" in markdown
    assert result.json()["videos"] == []


def test_bad_runs_are_one_line_with_a_hint(cli, zk0_home):
    result = cli("report", "no-such-run")
    assert result.code == ExitCode.BAD_INPUT
    assert "no run 'no-such-run'" in result.stderr and "hint:" in result.stderr and "Traceback" not in result.stderr
    broken = write_record(zk0_home / "data" / "runs", "broken", [2.0, 1.0])
    (broken / "policy_loss_history.json").unlink()
    result = cli("report", "broken")
    assert result.code == ExitCode.BAD_INPUT and "incomplete: policy_loss_history.json missing" in result.stderr
    holed = write_record(zk0_home / "data" / "runs", "holed", [2.0, 1.0, 0.5])
    (holed / "round_1_server_eval.json").unlink()
    result = cli("report", "holed")
    assert result.code == ExitCode.BAD_INPUT and "round records [1] missing" in result.stderr


# A probe added to a COPY of the report: it records script errors and, once loaded, whether every
# image decoded (naturalWidth > 0) and every video read its metadata, into a <pre> that --dump-dom shows.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener('load', async () => {
  const images = Array.from(document.images);
  const decoded = await Promise.all(images.map(i => i.decode().then(() => i.naturalWidth > 0, () => false)));
  const videos = Array.from(document.querySelectorAll('video'));
  const ready = await Promise.all(videos.map(v => v.readyState >= 1 ? true : new Promise(done => {
    v.addEventListener('loadedmetadata', () => done(true)); v.addEventListener('error', () => done(false));
    setTimeout(() => done(false), 3000); })));
  const probe = document.createElement('pre');
  probe.id = 'zk0-probe';
  probe.textContent = JSON.stringify({images: images.length, decoded: decoded.filter(Boolean).length,
    widths: images.map(i => i.naturalWidth), videos: videos.length, videos_ready: ready.filter(Boolean).length,
    errors: window.__errors});
  document.body.appendChild(probe);
});
</script>"""


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(cli, run_dir, tmp_path):
    result = cli("report", str(run_dir), "--out", str(tmp_path / "report"), "--json")
    assert result.code == 0, result.stderr
    page = tmp_path / "probed.html"
    page.write_text(Path(result.json()["html"]).read_text().replace("<head>", "<head>" + PROBE, 1))
    shutil.copytree(tmp_path / "report" / "videos", tmp_path / "videos")
    browser = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert browser.returncode == 0, browser.stderr[-2000:]
    dom = browser.stdout
    assert '<pre id="zk0-probe">' in dom, dom[-2000:]
    probe = json.loads(dom.split('<pre id="zk0-probe">')[1].split("</pre>")[0].replace("&quot;", '"'))
    assert probe["errors"] == []
    assert probe["images"] == probe["decoded"] == 2 and all(width > 300 for width in probe["widths"])
    assert probe["videos"] == probe["videos_ready"] == 1  # the embedded H.264 video's metadata loads
