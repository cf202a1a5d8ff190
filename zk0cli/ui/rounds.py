"""One line per finished round, the same for `zk0 run --stream`, `zk0 sim` and `zk0 demo`."""

from __future__ import annotations

from rich.markup import escape


def round_line(summary: dict, rounds: int) -> str:
    """Rich markup for one round summary (``zk0cli.fl.records.summary``)."""
    parts = [f"round {summary['round']}/{rounds}"]
    if summary.get("server_policy_loss") is not None:
        parts.append(f"server eval {summary['server_policy_loss']:.4f}")
    if summary.get("loss_avg") is not None:
        parts.append(
            f"train loss {summary['loss_avg']:.4f} ± {summary.get('loss_std') or 0:.4f}"
            f" ({summary.get('num_clients', 0)} clients)"
        )
    if summary.get("lr") is not None:
        parts.append(f"lr {summary['lr']:.2e} mu {summary.get('mu') or 0:.2e}")
    if any(summary.get(key) for key in ("rejected", "failed", "late", "quarantined")):
        extra = "".join(f", {summary[key]} {key}" for key in ("late", "quarantined") if summary.get(key))
        parts.append(
            f"[yellow]{summary.get('rejected', 0)} rejected, {summary.get('failed', 0)} failed{extra}[/yellow]"
        )
    for node, flags in (summary.get("flagged") or {}).items():
        parts.append(escape(f"[{node} flagged: {'; '.join(flags)}]"))
    clients = {name: loss for name, loss in (summary.get("client_losses") or {}).items() if loss is not None}
    if clients:
        parts.append(escape("(" + ", ".join(f"{name} {loss:.4f}" for name, loss in clients.items()) + ")"))
    return "  ".join(parts)
