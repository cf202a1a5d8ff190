"""The server's round-to-round control state: which lr and mu each round trains with, and why.

Wires the pure rules of :mod:`zk0cli.fl.schedules` together in one order that the round record
documents: round-level schedule -> trend adjustment (server eval loss) -> per-client boost for the
lr; decay -> spread adjustment -> clamp for mu.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zk0cli.fl import schedules
from zk0cli.fl.run_config import RunConfig


@dataclass
class RoundPlan:
    server_round: int
    lr: float  # the round's lr before per-client boosts
    lr_reasons: list[str]
    client_lr: dict[str, schedules.Decision]  # boosted clients only, by node id
    mu: float
    mu_reasons: list[str]

    def lr_for(self, node: str) -> float:
        boost = self.client_lr.get(node)
        return boost.value if boost else self.lr

    def to_dict(self) -> dict[str, Any]:
        return {
            "lr": {
                "value": self.lr,
                "why": self.lr_reasons,
                "boosted_clients": {node: {"lr": d.value, "why": d.reason} for node, d in self.client_lr.items()},
            },
            "mu": {"value": self.mu, "why": self.mu_reasons},
        }


@dataclass
class RoundControl:
    config: RunConfig
    server_losses: list[float] = field(default_factory=list)  # composite server eval loss, in eval order
    client_losses: dict[str, float] = field(default_factory=dict)  # last training loss of each node
    mu: float | None = None
    lr_scale: float = 1.0  # product of the trend adjustments so far
    plateau: schedules.PlateauState = field(default_factory=schedules.PlateauState)
    plateau_lr: float | None = None
    plateau_reason: str = ""
    _new_server_loss: bool = False

    def replay(self, rounds: list[dict[str, Any]]) -> None:
        """Rebuild the state a run had after these round records (round 0 first), to resume it.

        The same calls in the same order as the live run made them: plan, the accepted clients'
        losses, the server eval loss. Every rule is deterministic, so the next plan is the one
        the uninterrupted run would have made.
        """
        for entry in rounds:
            if entry["round"] > 0:
                self.plan(entry["round"])
                accepted = (entry.get("clients") or {}).get("each") or []
                self.observe_clients({c["node"]: c["metrics"]["loss"] for c in accepted})
            loss = judging_loss(entry)
            if loss is not None:
                self.observe_server_loss(loss)

    def observe_clients(self, losses: dict[str, float]) -> None:
        """Training losses of this round's accepted clients (the next plan compares them)."""
        self.client_losses = dict(losses)

    def observe_server_loss(self, loss: float) -> None:
        self.server_losses.append(loss)
        self._new_server_loss = True
        if self.config.lr_schedule == "reduce_on_plateau":
            current = self.plateau_lr if self.plateau_lr is not None else self.config.lr
            c = self.config
            decision, self.plateau = schedules.reduce_on_plateau_lr(
                current, self.plateau, loss, c.stall_patience, c.plateau_factor, c.eta_min
            )
            self.plateau_lr, self.plateau_reason = decision.value, decision.reason

    def plan(self, server_round: int) -> RoundPlan:
        lr, lr_reasons = self._round_lr(server_round)
        client_lr: dict[str, schedules.Decision] = {}
        if self.config.adaptive_lr:
            decisions = schedules.client_lr_boosts(
                self.client_losses, lr, self.config.high_loss_multiplier, self.config.lr_boost_factor
            )
            client_lr = {node: d for node, d in decisions.items() if d.value != lr}
        mu, mu_reasons = self._round_mu()
        return RoundPlan(server_round, lr, lr_reasons, client_lr, mu, mu_reasons)

    def _round_lr(self, server_round: int) -> tuple[float, list[str]]:
        c = self.config
        if c.lr_schedule == "cosine":
            base = schedules.cosine_lr(server_round, c.num_server_rounds, c.lr, c.eta_min)
        elif c.lr_schedule == "cosine_warm_restarts":
            base = schedules.cosine_warm_restarts_lr(server_round, c.lr, c.eta_min, c.t_0, c.t_mult)
        elif c.lr_schedule == "reduce_on_plateau":
            base = schedules.Decision(self.plateau_lr or c.lr, self.plateau_reason or "reduce_on_plateau: no eval yet")
        else:
            base = schedules.Decision(c.lr, "constant")
        reasons = [base.reason]
        if c.lr_trend and self._new_server_loss:
            self._new_server_loss = False
            current = max(base.value * self.lr_scale, c.eta_min)
            trend = schedules.adjust_lr_from_trend(
                current,
                self.server_losses,
                server_round,
                adjustment_window=c.adjustment_window,
                eta_min=c.eta_min,
                spike_threshold=c.spike_threshold,
                max_adjust_factor=c.max_adjust_factor,
                early_rounds=c.early_rounds,
                stall_factor=c.lr_stall_factor,
                divergence_factor=c.lr_divergence_factor,
            )
            self.lr_scale *= trend.value / current
            reasons.append(f"trend: {trend.reason}")
        if self.lr_scale != 1.0:
            reasons.append(f"trend scale x{self.lr_scale:.4g}")
        lr = max(base.value * self.lr_scale, c.eta_min)
        return lr, reasons

    def _round_mu(self) -> tuple[float, list[str]]:
        c = self.config
        if self.mu is None:
            mu, reasons = c.proximal_mu, ["initial proximal-mu"]
        else:
            decay = schedules.decay_mu(self.mu, c.mu_decay)
            mu, reasons = decay.value, [decay.reason]
        if c.dynamic_mu and self.mu is not None:
            spread = schedules.adjust_mu_for_spread(
                mu, list(self.client_losses.values()), c.loss_std_threshold, c.mu_adjust_factor, c.mu_min, c.mu_max
            )
            mu = spread.value
            reasons.append(spread.reason)
        clamped = schedules.clamp(mu, c.mu_min, c.mu_max)
        if clamped != mu:
            mu = clamped
            reasons.append(f"clamped to [{c.mu_min:g}, {c.mu_max:g}]")
        self.mu = mu
        return mu, reasons


def judging_loss(entry: dict[str, Any]) -> float | None:
    """The loss a round is judged by (the schedules follow it): the server's evaluation on its
    held-out data; without held-out data, the nodes' federated evaluation; None on other rounds."""
    server = entry.get("server_eval")
    if server:
        return float(server["composite"]["policy_loss"])
    federated = (entry.get("federated_eval") or {}).get("aggregate")
    return float(federated["policy_loss"]) if federated else None
