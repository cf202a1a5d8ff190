"""PNG plots of a run, drawn from federated_metrics.json entries (matplotlib, no display needed)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zk0cli.core.files import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def write_plots(plots_dir: Path, metrics: list[dict[str, Any]]) -> list[Path]:
    return [
        _save(plots_dir / "losses.png", losses_figure(metrics)),
        _save(plots_dir / "lr_mu.png", _lr_mu_figure(metrics)),
    ]


def losses_figure(metrics: list[dict[str, Any]]) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.add_subplot()
    server = [(m["round"], m["server_policy_loss"]) for m in metrics if m.get("server_policy_loss") is not None]
    if server:
        ax.plot(*zip(*server, strict=True), marker="o", linewidth=2.2, color="black", label="server eval (held-out)")
    federated = [(m["round"], m["federated_eval_loss"]) for m in metrics if m.get("federated_eval_loss") is not None]
    if federated:
        ax.plot(
            *zip(*federated, strict=True),
            marker="s",
            linestyle="--",
            color="tab:gray",
            label="federated eval (clients' held-out)",
        )
    for node in sorted({node for m in metrics for node in m.get("client_losses", {})}):
        points = [
            (m["round"], m["client_losses"][node]) for m in metrics if m.get("client_losses", {}).get(node) is not None
        ]
        ax.plot(*zip(*points, strict=True), marker=".", alpha=0.7, label=f"client {node} (train)")
    ax.set_xlabel("round")
    ax.set_ylabel("loss")
    ax.set_title("Policy loss per round")
    _round_axis(ax)
    if ax.lines:  # beside the axes: a legend inside would sit on the curves it names
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return fig


def _lr_mu_figure(metrics: list[dict[str, Any]]) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=100)
    lr_ax, mu_ax = fig.subplots(2, 1, sharex=True)
    trained = [m for m in metrics if m.get("lr") is not None]
    if trained:
        lr_ax.plot([m["round"] for m in trained], [m["lr"] for m in trained], marker="o", color="tab:blue")
        mu_ax.plot([m["round"] for m in trained], [m["mu"] for m in trained], marker="o", color="tab:orange")
    lr_ax.set_ylabel("lr (round)")
    mu_ax.set_ylabel("FedProx mu")
    mu_ax.set_xlabel("round")
    lr_ax.set_title("Learning rate and proximal mu per round")
    for ax in (lr_ax, mu_ax):
        _round_axis(ax)
    return fig


def _round_axis(ax: Any) -> None:
    """Rounds are whole numbers: no tick at round 0.5."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _save(path: Path, fig: Figure) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return path
