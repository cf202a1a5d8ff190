"""Learning-rate and FedProx-mu rules of the server, as pure functions.

Each rule returns the new value together with a short reason, so the round record can say why
lr or mu changed. State that a rule needs between rounds (e.g. the plateau counter) is passed in
and returned, never hidden, so every rule is unit-testable on its own.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    value: float
    reason: str


# ---------------------------------------------------------------- round-level LR schedules


def cosine_lr(server_round: int, num_rounds: int, base_lr: float, eta_min: float) -> Decision:
    """Cosine decay over the run: round 1 gets ``base_lr``; the curve would reach eta_min after the last round."""
    progress = (server_round - 1) / max(num_rounds, 1)
    lr = eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * min(progress, 1.0))) / 2
    return Decision(lr, f"cosine {server_round}/{num_rounds}")


def cosine_warm_restarts_lr(server_round: int, base_lr: float, eta_min: float, t_0: int, t_mult: int) -> Decision:
    """SGDR over rounds: cycles of t_0, t_0*t_mult, ... rounds, each starting again at ``base_lr``."""
    rounds_done = server_round - 1
    cycle, cycle_length = 0, t_0
    while rounds_done >= cycle_length:
        rounds_done -= cycle_length
        cycle += 1
        cycle_length *= t_mult
    lr = eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * rounds_done / cycle_length)) / 2
    if rounds_done == 0 and cycle > 0:
        return Decision(lr, f"warm restart (cycle {cycle + 1}, {cycle_length} rounds)")
    return Decision(lr, f"cosine_warm_restarts cycle {cycle + 1} step {rounds_done + 1}/{cycle_length}")


@dataclass(frozen=True)
class PlateauState:
    """What reduce-on-plateau remembers: the best server eval loss and rounds since it improved."""

    best: float = math.inf
    stalled_evals: int = 0


PLATEAU_MIN_IMPROVEMENT = 1e-4  # relative; smaller changes count as a stall (as torch's default)


def reduce_on_plateau_lr(
    lr: float, state: PlateauState, eval_loss: float, stall_patience: int, factor: float, eta_min: float
) -> tuple[Decision, PlateauState]:
    """Multiply lr by ``factor`` once the server eval loss has not improved for ``stall_patience`` evaluations."""
    if eval_loss < state.best * (1 - PLATEAU_MIN_IMPROVEMENT):
        return Decision(lr, f"eval loss improved to {eval_loss:.4g}"), PlateauState(eval_loss, 0)
    stalled = state.stalled_evals + 1
    if stalled < stall_patience:
        return Decision(lr, f"no improvement for {stalled}/{stall_patience} evals"), PlateauState(state.best, stalled)
    if lr <= eta_min:
        return Decision(eta_min, f"plateau, held at eta_min {eta_min:.3g}"), PlateauState(state.best, 0)
    new_lr = max(lr * factor, eta_min)
    reason = f"plateau for {stalled} evals: lr x{factor:g}" + (" (floored at eta_min)" if new_lr == eta_min else "")
    return Decision(new_lr, reason), PlateauState(state.best, 0)


# ---------------------------------------------------------------- per-client LR boost


def client_lr_boosts(
    client_losses: Mapping[str, float], lr: float, high_loss_multiplier: float, lr_boost_factor: float
) -> dict[str, Decision]:
    """lr for each client: boosted for a client whose last loss exceeds ``high_loss_multiplier`` x the mean."""
    finite = {name: loss for name, loss in client_losses.items() if math.isfinite(loss)}
    if len(finite) < 2:
        return {name: Decision(lr, "too few client losses to compare") for name in client_losses}
    mean = statistics.fmean(finite.values())
    decisions = {}
    for name, loss in client_losses.items():
        if name in finite and loss > high_loss_multiplier * mean:
            decisions[name] = Decision(
                lr * lr_boost_factor,
                f"loss {loss:.4g} > {high_loss_multiplier:g} x mean {mean:.4g}: lr x{lr_boost_factor:g}",
            )
        else:
            decisions[name] = Decision(lr, "loss near the mean")
    return decisions


# ---------------------------------------------------------------- FedProx mu


def clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def decay_mu(mu: float, mu_decay: float) -> Decision:
    """Exponential decay per round: the proximal pull weakens as the federation settles."""
    if mu_decay == 1.0:
        return Decision(mu, "no decay")
    return Decision(mu * mu_decay, f"decay x{mu_decay:g}")


def adjust_mu_for_spread(
    mu: float,
    client_losses: Sequence[float],
    loss_std_threshold: float,
    mu_adjust_factor: float,
    mu_min: float,
    mu_max: float,
) -> Decision:
    """Raise mu when client losses spread out (std > threshold), then clamp to [mu_min, mu_max]."""
    finite = [loss for loss in client_losses if math.isfinite(loss)]
    if len(finite) < 2:
        decision = Decision(mu, "too few client losses for a spread")
    else:
        spread = statistics.pstdev(finite)
        if spread > loss_std_threshold:
            decision = Decision(
                mu * mu_adjust_factor, f"loss std {spread:.4g} > {loss_std_threshold:g}: mu x{mu_adjust_factor:g}"
            )
        else:
            decision = Decision(mu, f"loss std {spread:.4g} <= {loss_std_threshold:g}")
    clamped = clamp(decision.value, mu_min, mu_max)
    if clamped != decision.value:
        bound = "mu_min" if clamped == mu_min else "mu_max"
        return Decision(clamped, f"{decision.reason}; clamped to {bound} {clamped:g}")
    return decision


# ---------------------------------------------------------------- LR from the server loss trend

STALL_IMPROVEMENT = 0.01  # a change under 1% over the window, either way, counts as a stall
SPIKE_LOOKBACK = 3  # rounds a spike is measured over


def detect_spike(server_losses: Sequence[float], spike_threshold: float) -> str:
    """A reason string if the latest loss rose more than ``spike_threshold`` (relative) within 3 rounds, else ''."""
    if len(server_losses) < 2:
        return ""
    latest = server_losses[-1]
    previous = server_losses[-1 - SPIKE_LOOKBACK : -1]
    low = min(previous)
    if low > 0 and (latest - low) / low > spike_threshold:
        return f"spike: loss rose {100 * (latest - low) / low:.0f}% within {SPIKE_LOOKBACK} rounds"
    return ""


def adjust_lr_from_trend(
    lr: float,
    server_losses: Sequence[float],
    server_round: int,
    *,
    adjustment_window: int,
    eta_min: float,
    spike_threshold: float,
    max_adjust_factor: float,
    early_rounds: int,
    stall_factor: float = 0.95,
    divergence_factor: float = 1.05,
) -> Decision:
    """Nudge lr from the server eval loss over the last ``adjustment_window`` evaluations.

    Stall (within 1% either way) -> lr x stall_factor; divergence (1% or more worse) -> lr x
    divergence_factor; held while a spike is detected; a single change is capped at
    ``max_adjust_factor`` either way during the first ``early_rounds`` rounds; the result never
    goes below eta_min.
    """
    if len(server_losses) < adjustment_window:
        return Decision(lr, f"too little history ({len(server_losses)}/{adjustment_window} evals)")
    spike = detect_spike(server_losses, spike_threshold)
    if spike:
        return Decision(lr, f"{spike}: lr held")
    window = server_losses[-adjustment_window:]
    first, last = window[0], window[-1]
    improvement = (first - last) / first if first > 0 else 0.0
    if improvement <= -STALL_IMPROVEMENT:
        factor, why = divergence_factor, f"divergence ({100 * -improvement:.1f}% worse over {adjustment_window} evals)"
    elif improvement < STALL_IMPROVEMENT:
        # a loss within 1% either way is a stall: eval noise must not read as divergence
        direction = "better" if improvement >= 0 else "worse"
        factor, why = stall_factor, f"stall ({100 * abs(improvement):.2f}% {direction} over {adjustment_window} evals)"
    else:
        return Decision(lr, f"improving ({100 * improvement:.1f}% over {adjustment_window} evals)")
    if server_round <= early_rounds:
        capped = clamp(factor, 1 / max_adjust_factor, max_adjust_factor)
        if capped != factor:
            factor, why = capped, f"{why}, capped at x{capped:.4g} in early rounds"
    new_lr = lr * factor
    if new_lr < eta_min:
        return Decision(eta_min, f"{why}: lr clamped at eta_min {eta_min:.3g}")
    return Decision(new_lr, f"{why}: lr x{factor:.4g}")
