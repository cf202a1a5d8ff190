"""The one round line shared by `zk0 run --stream`, `zk0 sim` and `zk0 demo`."""

from zk0cli.ui.rounds import round_line


def test_round_line_shows_what_the_round_record_says():
    summary = {
        "round": 2,
        "server_policy_loss": 1.23456,
        "loss_avg": 2.1,
        "loss_std": 0.1,
        "num_clients": 2,
        "lr": 1e-4,
        "mu": 0.0098,
        "rejected": 1,
        "failed": 0,
        "client_losses": {"alice": 2.0, "bob": None},
    }
    line = round_line(summary, 3)
    assert line.startswith("round 2/3")
    for part in (
        "server eval 1.2346",
        "train loss 2.1000 ± 0.1000 (2 clients)",
        "lr 1.00e-04 mu 9.80e-03",  # mu as precise as lr: 0.0098 is not 0.010
        "1 rejected, 0 failed",
        "(alice 2.0000)",
    ):
        assert part in line


def test_round_line_leaves_out_what_a_round_did_not_measure():
    assert round_line({"round": 0}, 5) == "round 0/5"


def test_sim_and_demo_say_their_time_in_the_one_duration_format(tmp_path):
    """Issue 12: one run's elapsed time was 1m58s in one place and 118 s in another."""
    import io

    from rich.console import Console

    from zk0cli.cli import demo, sim
    from zk0cli.fl.run_config import RunConfig
    from zk0cli.services.demo import DemoResult
    from zk0cli.services.simulation import SimResult

    def shown(render, result) -> str:
        console = Console(file=io.StringIO(), width=80)
        render(console, result)
        return " ".join(console.file.getvalue().split())

    run_dir = tmp_path / "runs" / "20261203-052817-6422"
    simulated = SimResult(run_dir, "7", "completed", [], 118.4, RunConfig.from_mapping({}))
    assert "completed in 1m58s; run record:" in shown(sim._render, simulated)
    stages = {"setup": 12.2, "training": 76.0}
    demoed = DemoResult(tmp_path, False, "r", run_dir, "completed", [], 118.4, stages, [], [], [])
    assert "completed in 1m58s (setup 12s, training 1m16s); every demo process stopped" in shown(demo._render, demoed)
