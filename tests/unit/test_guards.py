"""The exploitation guard on hand-made per-update series."""

import math

import pytest

from rlhf.guards import GuardSettings, UpdateMetrics, _slope_test, check_exploitation, first_stop, noise


def _run(reward, held_out, kl=None):
    """Updates 0..n-1; KL 0.1 per update, length +5 tokens and EOS share -5 points per update."""
    n = len(reward)
    kl = kl or [0.1 * t for t in range(n)]
    return [UpdateMetrics(t, reward[t], held_out[t], kl[t], 40 + 5 * t, 0.9 - 0.05 * t) for t in range(n)]


# Windows of 5 updates keep the hand-made series short (the default is 8).
W5 = GuardSettings(window=5)


def _actions(history, settings=W5):
    return [check_exploitation(history[:t], settings).action for t in range(1, len(history) + 1)]


def test_slope_test_and_noise_by_hand():
    # ys 0 1 1 2 3 against x - 2 = -2..2: slope 7/10; residuals 0 .3 -.4 -.1 .2, sum of squares .3;
    # s^2 = .3/3, se = sqrt(.1/10) = .1, t = 7 on 3 df: one-sided p = 0.002993.
    slope, p = _slope_test([0, 1, 1, 2, 3])
    assert slope == pytest.approx(0.7) and p == pytest.approx(0.0029931, abs=1e-6)
    assert _slope_test([1, 2, 3]) == (pytest.approx(1.0), 0.0)  # an exact rising line
    assert _slope_test([3, 2, 1])[1] == 1.0
    # Differences 1 2 1 2: median 1.5, absolute deviations all .5: 1.4826 * .5 / sqrt 2.
    assert noise([0, 1, 3, 4, 6]) == pytest.approx(1.4826 * 0.5 / math.sqrt(2))
    assert noise([0, 1]) == math.inf


HONEST = _run([1.0, 1.3, 1.5, 1.9, 2.2, 2.4, 2.8, 3.0, 3.3, 3.7, 3.9, 4.2],
              [0.0, 0.25, 0.45, 0.5, 0.8, 0.75, 1.0, 1.15, 1.1, 1.4, 1.45, 1.6])
# Training reward rises by 1 per update throughout; the second reward model's peaks at update 4.
EXPLOITED = _run(list(range(1, 11)), [0.0, 0.45, 1.05, 1.45, 1.5, 1.35, 1.0, 0.7, 0.3, 0.1])


def test_an_honest_run_is_not_stopped():
    assert _actions(HONEST) == ["continue"] * 12  # its dips (.05) stay within the noise margin
    decision = first_stop(HONEST, W5)
    assert (decision.action, decision.step, decision.keep_step) == ("continue", 11, 11)
    assert decision.message == "Update 11: no sign of reward hacking."


def test_a_run_exploiting_the_reward_model_is_stopped_keeping_the_best_held_out_update():
    # Update 5: the window 1-5 of the second model still rises (slope +0.225). Update 6: window 2-6,
    # sum (x-2) y = -2.1 - 1.45 + 1.35 + 2.0 = -0.2 -> slope -0.02 while the training reward rises
    # on an exact line (p = 0): warning 1. Update 7: window 3-7 slope -0.2: warning 2 = patience: stop.
    assert _actions(EXPLOITED)[:8] == ["continue"] * 6 + ["warn", "stop"]
    decision = first_stop(EXPLOITED, W5)
    assert (decision.action, decision.step, decision.keep_step) == ("stop", 7, 4)
    assert decision.message == (
        "Stopping at update 7 (2 warnings in a row): over updates 3-7 the training reward rose 4 -> 8 "
        "(+1 per update, p < 0.001) while the second reward model's did not (-0.2 per update): the policy is "
        "exploiting the training reward model; keeping update 4, where the second reward model's reward was "
        "best (1.5; training reward 5, KL 0.4); reply length 60 -> 75 tokens, EOS share 70% -> 55%.")
    # The default windows of 8 see it two updates later and keep the same update; the honest run goes on.
    assert _actions(EXPLOITED, GuardSettings()) == ["continue"] * 8 + ["warn", "stop"]
    assert (first_stop(EXPLOITED).step, first_stop(EXPLOITED).keep_step) == (9, 4)
    assert first_stop(HONEST).action == "continue"


def test_a_flat_second_model_under_a_rising_training_reward_stops_after_patience():
    flat = _run(list(range(1, 11)), [1.0, 1.1, 0.95, 1.05, 1.0, 0.98, 1.02, 0.97, 1.0, 0.96])
    # Window 0-4: sum (x-2) y = -2 - 1.1 + 1.05 + 2 = -0.05 (slope -0.005): warning; window 1-5: -0.019.
    assert _actions(flat)[:6] == ["continue"] * 4 + ["warn", "stop"]
    assert first_stop(flat, W5).keep_step == 1
    assert _actions(flat, GuardSettings(window=5, patience=3))[:7] == ["continue"] * 4 + ["warn", "warn", "continue"]


def test_a_drop_below_the_best_by_the_margin_stops_before_the_slope_window_fills():
    run = _run([1, 2, 3, 4, 5, 6], [0.0, 0.5, 1.0, 0.9, 0.6, 0.5])
    settings = GuardSettings(window=8, margin=0.3)
    # Update 3: 0.9 is 0.1 below the best (1.0 at update 2): within the margin. Update 4: 0.4 below, and
    # the training reward rose 3 -> 5: warning; update 5 again: stop, keeping update 2.
    assert _actions(run, settings) == ["continue"] * 4 + ["warn", "stop"]
    decision = first_stop(run, settings)
    assert decision.keep_step == 2
    assert "the second reward model's reward 0.5 is 0.5 below its best (1 at update 2; margin 0.3)" in decision.message


def test_kl_above_its_bound_stops_at_once_keeping_the_best_update_within_the_bound():
    # KL 0.1 per update crosses 0.55 at update 6; the best second-model reward up to then is 0.8 (update 4).
    decision = first_stop(HONEST, GuardSettings(window=5, kl_bound=0.55))
    assert (decision.action, decision.step, decision.keep_step) == ("stop", 6, 4)
    assert decision.reasons == ("KL to the reference 0.6 crossed the bound 0.55",)
    # Had the best second-model reward come after the crossing, it would not be kept.
    late = _run([1, 2, 3], [0.0, 0.1, 0.9], kl=[0.1, 0.2, 0.9])
    assert check_exploitation(late, GuardSettings(kl_bound=0.5)).keep_step == 1


def test_settings_are_checked():
    with pytest.raises(ValueError, match="window must be at least 3"):
        check_exploitation(HONEST, GuardSettings(window=2))
    with pytest.raises(ValueError, match="no update"):
        check_exploitation([])
    with pytest.raises(ValueError, match="no update"):
        first_stop([])


# The efficacy suite's offers_help rule at 32 PPO updates (runs/efficacy/s18, rounded): the training
# reward climbs to its highest at the last update while the second model's falls from 0.98 (update 19);
# the replies had turned into strings of emoji that both reward models score above a real answer.
OFFERS_HELP_32 = [UpdateMetrics(t + 1, r, h, 10.0, 40.0, 0.0) for t, (r, h) in enumerate(zip(
    [-0.01, 0.25, -0.39, -0.05, -0.08, 0.07, 0.39, 0.15, 0.27, 0.34, 0.19, 0.54, 0.29, 0.2, 0.37, 0.69,
     0.41, 0.57, 0.75, 0.35, 0.81, 0.7, 0.76, 0.43, 0.62, 0.54, 0.67, 0.83, 0.93, 0.88, 0.96, 1.2],
    [0.22, 0.44, -0.31, 0.2, 0.03, 0.13, 0.46, 0.27, 0.51, 0.47, 0.22, 0.52, 0.4, 0.23, 0.38, 0.91,
     0.59, 0.77, 0.98, 0.68, 0.92, 0.92, 0.92, 0.6, 0.81, 0.64, 0.74, 0.67, 0.88, 0.9, 0.71, 0.54]))]


def test_a_warning_on_the_runs_last_update_stops_it_keeping_the_best_update():
    # Window 25-32: the training reward's slope is significant, the second model's is negative: the
    # first warning comes at update 32, the last. Without ``final`` the run would end on it and export
    # update 32; with it the guard keeps update 19.
    assert _actions(OFFERS_HELP_32, GuardSettings()) == ["continue"] * 31 + ["warn"]
    decision = first_stop(OFFERS_HELP_32, final=True)
    assert (decision.action, decision.step, decision.keep_step) == ("stop", 32, 19)
    assert decision.message.startswith("Stopping at update 32, the run's last, on a warning no later update can "
                                       "confirm or clear: over updates 25-32 the training reward rose 0.62 -> 1.2")
    assert decision.message.endswith("keeping update 19, where the second reward model's reward was best (0.98; "
                                     "training reward 0.75, KL 10); reply length 40 -> 40 tokens, EOS share 0% -> 0%.")
    # ``final`` turns only a warning into a stop: an honest run's last update, or one mid-run, is unchanged.
    assert first_stop(HONEST, W5, final=True).action == "continue"
    assert check_exploitation(EXPLOITED[:7], W5).action == "warn"
    assert check_exploitation(EXPLOITED[:7], W5, final=True).keep_step == 4
    # A warning whose best update is the last itself has nothing better to keep: it stays a warning.
    rising = _run([1, 2, 3, 4, 5, 6], [0.0, 0.1, 0.0, 0.1, 0.0, 0.2])
    assert check_exploitation(rising, W5).action == check_exploitation(rising, W5, final=True).action
