"""The server's lr/mu rules, one by one, at their edges."""

import math

import pytest

from zk0cli.fl import schedules as s

# ---------------------------------------------------------------- cosine


def test_cosine_starts_at_base_and_decays_towards_eta_min():
    lrs = [s.cosine_lr(r, 10, 1e-3, 1e-5).value for r in range(1, 11)]
    assert lrs[0] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] > 1e-5  # the last round still trains


def test_cosine_beyond_the_planned_rounds_stays_at_eta_min():
    assert s.cosine_lr(50, 10, 1e-3, 1e-5).value == pytest.approx(1e-5)


def test_cosine_single_round_run_uses_base_lr():
    assert s.cosine_lr(1, 1, 1e-3, 0.0).value == pytest.approx(1e-3)


# ---------------------------------------------------------------- warm restarts


def test_warm_restarts_with_constant_cycles():
    lrs = [s.cosine_warm_restarts_lr(r, 1.0, 0.0, t_0=3, t_mult=1) for r in range(1, 8)]
    assert [d.value for d in lrs][::3] == pytest.approx([1.0, 1.0, 1.0])
    assert lrs[1].value == pytest.approx(0.75)
    assert "warm restart" in lrs[3].reason and "warm restart" not in lrs[0].reason


def test_warm_restarts_cycles_grow_by_t_mult():
    # t_0=2, t_mult=2: cycles of 2, 4, 8 rounds -> restarts at rounds 3 and 7
    restarts = [r for r in range(1, 16) if "warm restart" in s.cosine_warm_restarts_lr(r, 1.0, 0.0, 2, 2).reason]
    assert restarts == [3, 7, 15]
    assert s.cosine_warm_restarts_lr(7, 1.0, 0.0, 2, 2).reason.startswith("warm restart (cycle 3, 8 rounds)")


# ---------------------------------------------------------------- reduce on plateau


def test_plateau_needs_patience_before_reducing():
    state = s.PlateauState()
    decision, state = s.reduce_on_plateau_lr(1e-3, state, 1.0, stall_patience=2, factor=0.5, eta_min=1e-5)
    assert decision.value == 1e-3 and state.best == 1.0
    decision, state = s.reduce_on_plateau_lr(1e-3, state, 1.0, 2, 0.5, 1e-5)
    assert decision.value == 1e-3 and state.stalled_evals == 1
    decision, state = s.reduce_on_plateau_lr(1e-3, state, 1.2, 2, 0.5, 1e-5)
    assert decision.value == pytest.approx(5e-4) and "plateau" in decision.reason
    assert state.stalled_evals == 0  # the counter starts again after a reduction


def test_plateau_improvement_resets_the_counter():
    state = s.PlateauState(best=1.0, stalled_evals=1)
    decision, state = s.reduce_on_plateau_lr(1e-3, state, 0.9, 2, 0.5, 1e-5)
    assert decision.value == 1e-3 and state == s.PlateauState(0.9, 0)


def test_plateau_tiny_improvement_counts_as_stall():
    state = s.PlateauState(best=1.0, stalled_evals=0)
    _, state = s.reduce_on_plateau_lr(1e-3, state, 1.0 - 1e-6, 5, 0.5, 1e-5)
    assert state.stalled_evals == 1


def test_plateau_floors_at_eta_min():
    state = s.PlateauState(best=1.0, stalled_evals=0)
    decision, _ = s.reduce_on_plateau_lr(1.5e-5, state, 2.0, 1, 0.5, 1e-5)
    assert decision.value == 1e-5 and "eta_min" in decision.reason
    decision, _ = s.reduce_on_plateau_lr(1e-5, state, 2.0, 1, 0.5, 1e-5)
    assert decision.value == 1e-5 and "held" in decision.reason


# ---------------------------------------------------------------- client lr boost


def test_boost_only_the_high_loss_client():
    out = s.client_lr_boosts({"a": 1.0, "b": 1.0, "c": 10.0}, 1e-4, 2.0, 1.15)
    assert out["c"].value == pytest.approx(1.15e-4) and "lr x1.15" in out["c"].reason
    assert out["a"].value == out["b"].value == 1e-4


def test_boost_exact_threshold_is_not_boosted():
    # mean of (1, 3) is 2; 3 == 1.5 x 2 exactly: not above the threshold
    out = s.client_lr_boosts({"a": 1.0, "b": 3.0}, 1.0, 1.5, 2.0)
    assert out["b"].value == 1.0


def test_boost_needs_two_finite_losses():
    out = s.client_lr_boosts({"a": 5.0, "b": math.nan}, 1.0, 1.01, 2.0)
    assert out["a"].value == 1.0 and "too few" in out["a"].reason
    assert s.client_lr_boosts({}, 1.0, 2.0, 1.15) == {}


# ---------------------------------------------------------------- mu


def test_mu_decays_exponentially():
    mu = 1.0
    for _ in range(3):
        mu = s.decay_mu(mu, 0.5).value
    assert mu == pytest.approx(0.125)
    assert s.decay_mu(0.3, 1.0).reason == "no decay"


def test_mu_raised_when_losses_spread():
    decision = s.adjust_mu_for_spread(0.1, [0.0, 4.0], 1.2, 1.5, 0.001, 1.0)  # pstdev = 2
    assert decision.value == pytest.approx(0.15) and "std 2" in decision.reason


def test_mu_exact_std_threshold_is_not_raised():
    decision = s.adjust_mu_for_spread(0.1, [0.0, 4.0], 2.0, 1.5, 0.001, 1.0)
    assert decision.value == 0.1


def test_mu_clamped_both_ways():
    high = s.adjust_mu_for_spread(0.9, [0.0, 4.0], 1.0, 2.0, 0.001, 1.0)
    assert high.value == 1.0 and "mu_max" in high.reason
    low = s.adjust_mu_for_spread(1e-5, [1.0, 1.0], 1.0, 2.0, 0.001, 1.0)
    assert low.value == 0.001 and "mu_min" in low.reason


def test_mu_spread_needs_two_clients():
    assert "too few" in s.adjust_mu_for_spread(0.1, [3.0], 0.1, 2.0, 0.0, 1.0).reason


# ---------------------------------------------------------------- lr from the loss trend

TREND = dict(adjustment_window=3, eta_min=1e-6, spike_threshold=0.5, max_adjust_factor=1.05, early_rounds=0)


def test_trend_needs_a_full_window():
    decision = s.adjust_lr_from_trend(1e-4, [1.0, 1.0], 5, **TREND)
    assert decision.value == 1e-4 and "too little history (2/3" in decision.reason


def test_trend_stall_lowers_lr():
    decision = s.adjust_lr_from_trend(1e-4, [1.0, 0.999, 0.995], 5, **TREND)
    assert decision.value == pytest.approx(0.95e-4) and "stall" in decision.reason


def test_trend_exactly_one_percent_is_improvement():
    decision = s.adjust_lr_from_trend(1e-4, [100.0, 99.5, 99.0], 5, **TREND)
    assert decision.value == 1e-4 and "improving" in decision.reason


def test_trend_slightly_worse_is_a_stall_not_divergence():
    # eval noise (here 0.001% worse) must not raise lr as if the run diverged
    decision = s.adjust_lr_from_trend(1e-4, [1.0, 1.0, 1.00001], 5, **TREND)
    assert decision.value == pytest.approx(0.95e-4) and "stall (0.00% worse" in decision.reason


def test_trend_divergence_raises_lr():
    decision = s.adjust_lr_from_trend(1e-4, [1.0, 1.02, 1.1], 5, **TREND)
    assert decision.value == pytest.approx(1.05e-4) and "divergence" in decision.reason


def test_trend_held_during_a_spike():
    decision = s.adjust_lr_from_trend(1e-4, [1.0, 1.0, 1.0, 1.6], 5, **TREND)
    assert decision.value == 1e-4 and "spike" in decision.reason and "held" in decision.reason


def test_spike_exact_threshold_is_not_a_spike():
    assert s.detect_spike([1.0, 1.5], 0.5) == ""
    assert s.detect_spike([1.0, 1.51], 0.5) != ""
    assert s.detect_spike([1.0], 0.5) == ""
    # older than 3 rounds back does not count
    assert s.detect_spike([0.5, 1.0, 1.0, 1.0, 1.2], 0.5) == ""


def test_trend_clamped_at_eta_min():
    decision = s.adjust_lr_from_trend(1.02e-6, [1.0, 1.0, 1.0], 5, **TREND)
    assert decision.value == 1e-6 and "eta_min" in decision.reason


def test_trend_capped_in_early_rounds():
    params = {**TREND, "early_rounds": 10, "max_adjust_factor": 1.02}
    early = s.adjust_lr_from_trend(1.0, [1.0, 1.0, 1.0], 10, **params)
    assert early.value == pytest.approx(1 / 1.02) and "capped" in early.reason
    later = s.adjust_lr_from_trend(1.0, [1.0, 1.0, 1.0], 11, **params)
    assert later.value == pytest.approx(0.95)
