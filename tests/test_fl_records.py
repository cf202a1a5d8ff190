"""Run record pieces on their own: round files and summaries, checkpoints, plots, videos."""

import json
import subprocess
import sys

import numpy as np
import pytest

from zk0cli.core.errors import ExitCode, Zk0Error
from zk0cli.datasets.uri import fingerprint_dir
from zk0cli.fl import plots, records, video


def round_entry(n, server_loss=None, client_losses=None, lr=1e-4, mu=0.01):
    entry = {"round": n, "plan": {"lr": {"value": lr, "why": []}, "mu": {"value": mu, "why": []}} if n else None}
    if client_losses:
        entry["clients"] = {
            "aggregate": {"num_clients": len(client_losses), "loss_avg": float(np.mean(list(client_losses.values())))},
            "each": [{"node": node, "metrics": {"loss": loss}} for node, loss in client_losses.items()],
        }
    if server_loss is not None:
        entry["server_eval"] = {
            "datasets": {"pick": {"policy_loss": server_loss, "action_error": 2 * server_loss}},
            "composite": {"policy_loss": server_loss, "action_error": 2 * server_loss},
        }
    return entry


def test_rounds_build_the_summaries_in_round_order(tmp_path):
    run = records.RunRecord.create(tmp_path, "r1")
    run.write_round(round_entry(0, server_loss=2.0))
    run.write_round(round_entry(2, server_loss=1.0, client_losses={"7": 1.2, "9": 1.4}))
    run.write_round(round_entry(1, client_losses={"7": 1.5, "9": 1.6}))
    metrics = json.loads((run.root / "federated_metrics.json").read_text())
    assert [m["round"] for m in metrics] == [0, 1, 2]
    assert metrics[2]["client_losses"] == {"7": 1.2, "9": 1.4} and metrics[2]["lr"] == 1e-4
    history = json.loads((run.root / "policy_loss_history.json").read_text())
    assert [(h["round"], h["policy_loss"]) for h in history] == [(0, 2.0), (2, 1.0)]
    assert (run.root / "round_1_server_eval.json").is_file()


def test_checkpoints_keep_last_k_and_final_points_at_the_newest(tmp_path):
    run = records.RunRecord.create(tmp_path, "r")
    for n in (1, 2, 3):
        run.save_checkpoint(n, lambda d, _final, n=n: (d / "weights.txt").write_text(str(n)), keep_last=2)
    assert [p.name for p in run.checkpoints()] == ["round_0002", "round_0003"]
    assert (run.root / "final" / "weights.txt").read_text() == "3"
    assert not list((run.root / "checkpoints").glob(".*"))  # no temporary leftovers


def test_failed_checkpoint_leaves_the_previous_final(tmp_path):
    run = records.RunRecord.create(tmp_path, "r")
    run.save_checkpoint(1, lambda d, _final: (d / "w").write_text("1"), keep_last=0)

    def broken(directory, _final):
        (directory / "w").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        run.save_checkpoint(2, broken, keep_last=0)
    assert (run.root / "final" / "w").read_text() == "1"
    assert [p.name for p in run.checkpoints()] == ["round_0001"]


def test_dataset_fingerprint_covers_meta_and_data_only(tmp_path):
    root = tmp_path / "ds"
    for rel, text in {"meta/info.json": "{}", "data/chunk-000/file-000.parquet": "x", "videos/a.mp4": "v"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    first = fingerprint_dir(root)
    (root / "videos/a.mp4").write_text("other")
    assert fingerprint_dir(root) == first
    (root / "data/chunk-000/file-000.parquet").write_text("y")
    assert fingerprint_dir(root) != first


def test_plots_are_pngs(tmp_path):
    metrics = [
        records.summary(round_entry(0, server_loss=2.0)),
        records.summary(round_entry(1, server_loss=1.5, client_losses={"1": 1.7, "2": 1.9})),
    ]
    for path in plots.write_plots(tmp_path / "plots", metrics):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_video_has_every_frame_at_the_dataset_fps(tmp_path):
    av = pytest.importorskip("av")
    steps = 12
    rng = np.random.default_rng(0)
    recorded = np.cumsum(rng.normal(size=(steps, 6)), axis=0)
    episode = video.EpisodeTrajectories(
        frames=rng.integers(0, 255, size=(steps, 48, 64, 3), dtype=np.uint8),
        predicted=recorded + 0.5,
        recorded=recorded,
        joint_names=[
            "shoulder_pan.pos",
            "shoulder_lift.pos",
            "elbow_flex.pos",
            "wrist_flex.pos",
            "wrist_roll.pos",
            "gripper.pos",
        ],
        fps=15,
        dataset="pick",
        episode=3,
    )
    info = video.write_video(tmp_path / "round_0002_pick.mp4", episode, server_round=2)
    assert info["action_error"] == pytest.approx(0.5) and info["episode"] == 3 and info["round"] == 2
    assert json.loads((tmp_path / "round_0002_pick.json").read_text()) == info
    with av.open(str(tmp_path / "round_0002_pick.mp4")) as container:
        stream = container.streams.video[0]
        decoded = list(container.decode(stream))
        assert stream.average_rate == 15
    assert len(decoded) == steps
    assert decoded[0].width % 2 == 0 and decoded[0].height == video.PANEL_HEIGHT


def test_writing_a_video_prints_nothing_after_lerobot_restored_libavs_own_logging(tmp_path):
    """Issue 12: libx264 printed 36 lines into `zk0 train` once LeRobot's video code had run."""
    script = (
        "import numpy as np, av.logging\n"
        "av.logging.restore_default_callback()  # what lerobot.datasets.video_utils leaves behind\n"
        "from zk0cli.fl.video import _encode\n"
        "assert len(_encode([np.zeros((64, 64, 3), np.uint8)] * 5, 10)) > 0\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


# --------------------------------------------------------------------------- following a record


def follow(run, *, flower_status=lambda: "running", check=None):
    from zk0cli.fl.record_follow import FollowedRun, follow_record

    seen = []
    followed = FollowedRun(run.root, "run 7", "see the log")
    status = follow_record(
        followed, on_round=seen.append, flower_status=flower_status, poll_s=0.01, flower_every_s=0.01, check=check
    )
    return status, [entry["round"] for entry in seen]


def test_following_a_record_reports_each_round_once_in_order_then_its_final_status(tmp_path):
    run = records.RunRecord.create(tmp_path, "r")
    run.write_round(round_entry(1))
    run.write_round(round_entry(0))
    polls = []

    def write_more():  # the ServerApp goes on writing while the record is followed
        polls.append(1)
        if len(polls) == 3:
            run.write_round(round_entry(2))
        if len(polls) == 6:
            run.write_status("completed", rounds=2)

    status, rounds = follow(run, check=write_more)
    assert rounds == [0, 1, 2] and status["state"] == "completed" and status["rounds"] == 2


def test_a_failed_record_raises_with_its_error_hint_and_exit_code(tmp_path):
    from zk0cli.core.errors import ExitCode, Zk0Error

    run = records.RunRecord.create(tmp_path, "r")
    run.write_status("failed", error="no checkpoint at /x", hint="pass a real checkpoint", exit_code=2)
    with pytest.raises(Zk0Error) as failed:
        follow(run)
    assert failed.value.message == "run 7 failed: no checkpoint at /x"
    assert failed.value.hint == "pass a real checkpoint" and failed.value.code == ExitCode.BAD_INPUT
    run.write_status("failed", exit_code=99)  # a code zk0 does not define: a plain failure, the default hint
    with pytest.raises(Zk0Error) as failed:
        follow(run)
    assert (failed.value.message, failed.value.hint, failed.value.code) == (
        "run 7 failed: unknown error",
        "see the log",
        ExitCode.FAILED,
    )


def test_a_run_flower_calls_finished_without_a_complete_record_fails_after_the_trail(tmp_path, monkeypatch):
    from zk0cli.core.errors import Zk0Error
    from zk0cli.fl import record_follow

    monkeypatch.setattr(record_follow, "RECORD_TRAIL_S", 0.05)
    run = records.RunRecord.create(tmp_path, "r")
    run.write_status("running")
    with pytest.raises(Zk0Error, match=r"run 7 ended \(finished:failed\) before its record was complete"):
        follow(run, flower_status=lambda: "finished:failed")


def test_a_run_is_found_by_record_name_flower_id_resume_id_or_unique_prefix(tmp_path):
    """Issue 12: every command that takes a run accepts either name, or a prefix of one."""
    runs = tmp_path / "runs"
    first = records.RunRecord.create(runs, "20261203-080000-0001-run")
    first.write_config({"seed": 1}, {}, {"flwr_run_id": 13705448887388137106, "resumes": [{"flwr_run_id": 42}]})
    second = records.RunRecord.create(runs, "20261203-090000-0002-run")
    second.write_config({"seed": 1}, {}, {"flwr_run_id": 9001})
    central = records.RunRecord.create(runs, "20261203-091500-0003-train")
    central.write_config({"seed": 1}, {}, {"mode": "centralized"})
    assert records.find_record(runs, "20261203-080000-0001-run") == first.root
    assert records.find_record(runs, "13705448887388137106") == first.root
    assert records.find_record(runs, "42") == first.root  # a resume's Flower id names the same record
    assert records.find_record(runs, "137054") == first.root  # unique prefix of a Flower id
    assert records.find_record(runs, "20261203-0915") == central.root  # ... and of a name
    assert records.find_record(runs, str(second.root)) == second.root
    assert records.record_flower_ids(first.root) == [13705448887388137106, 42]
    assert records.record_flower_ids(central.root) == []
    with pytest.raises(Zk0Error) as ambiguous:
        records.find_record(runs, "20261203-0")
    assert "matches 3 runs" in ambiguous.value.message and "more of the run name" in ambiguous.value.hint
    with pytest.raises(Zk0Error) as missing:
        records.find_record(runs, "nope")
    assert missing.value.code == ExitCode.BAD_INPUT and "zk0 runs" in missing.value.hint


def test_the_run_log_is_written_in_the_service_log_format_and_read_with_the_same_options(cli, zk0_home):
    import logging

    from zk0cli.core.paths import Paths

    record = records.RunRecord.create(Paths.resolve().runs_dir, "20261203-100000-0004-run")
    record.write_config({"seed": 1}, {}, {"flwr_run_id": 777000})
    logger = logging.getLogger("zk0.test-run-log")
    logger.setLevel(logging.INFO)
    handler = records.RunLog(record.root / records.RUN_LOG)
    logger.addHandler(handler)
    try:
        for n in range(5):
            logger.info("line %d", n)
        shown = cli("logs", "run", "777000", "--tail", "2", "--json")  # by Flower id
        assert shown.code == 0, shown.stderr
        first, second = shown.json()["lines"]
        assert first.endswith(" [zk0.test-run-log] line 3") and second.endswith(" [zk0.test-run-log] line 4")
        assert first[:4].isdigit() and first[23] == "Z"  # the stamp of zk0's service logs
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    recent = cli("logs", "run", "20261203-100000", "--since", "1m", "--json").json()["lines"]  # by name prefix
    assert recent[0].endswith("line 0") and recent[-1] == "ValueError: boom"  # the traceback goes with its line
    assert any(line.endswith("] failed") for line in recent)
    none = cli("--json", "logs", "run", "nope")
    assert none.code == 2 and "zk0 runs" in none.json()["hint"]
    endless = cli("logs", "run", "777000", "--follow", "--json")  # one JSON document cannot keep growing
    assert endless.code == 2 and endless.json()["error"] == "--follow and --json do not go together"
    assert "--tail or --since" in endless.json()["hint"]


def test_loss_plot_ticks_whole_rounds_and_keeps_its_legend_off_the_curves():
    """Issue 12: a 2-round run had ticks at 0.5 and a legend over the curve."""
    metrics = [
        records.summary(round_entry(0, server_loss=2.0)),
        records.summary(round_entry(1, server_loss=1.5, client_losses={"1": 1.7, "2": 1.9})),
        records.summary(round_entry(2, server_loss=1.2, client_losses={"1": 1.4, "2": 1.6})),
    ]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = plots.losses_figure(metrics)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    ax = figure.axes[0]
    shown = [tick for tick in ax.get_xticks() if ax.get_xlim()[0] <= tick <= ax.get_xlim()[1]]
    assert shown and all(float(tick).is_integer() for tick in shown)
    renderer = canvas.get_renderer()
    legend_box = ax.get_legend().get_window_extent(renderer)
    assert legend_box.x0 >= ax.get_window_extent(renderer).x1  # beside the axes, not on them
