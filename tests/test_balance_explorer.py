"""Drive the balance explorer (no browser): what it shows must match the trained runs."""

import math
import re
import statistics
import time

import pytest

from moe_teach import apply_capacity, expert_capacity
from moe_teach.widgets import balance_explorer
from moe_teach.widgets.balance import DROPLESS

BAR = re.compile(r'<rect data-index="(\d+)" data-value="([^"]+)" data-highlight="(true|false)"')
COEFS, FACTORS = (0.0, 0.1), (0.75, 1.0, 1.5, None)


@pytest.fixture(scope="module")
def explorer():
    return balance_explorer(coefs=COEFS, factors=FACTORS, steps=60, progress=False)


def shown(explorer, name):
    return float(re.search(rf'data-{name}="([^"]+)"', explorer.summary.value).group(1))


def assert_consistent(explorer):
    state = explorer.state
    record = explorer.records[state.coef]
    bars = [(int(i), float(v), h == "true") for i, v, h in BAR.findall(explorer.chart.value)]
    assert [i for i, _, _ in bars] == list(range(len(state.shares)))
    assert math.isclose(sum(v for _, v, _ in bars), 1.0, abs_tol=1e-4)          # displayed shares
    assert math.isclose(sum(state.shares), 1.0, abs_tol=1e-6)
    assert sum(state.routed_per_expert) == state.num_assignments == record.expert_indices.numel()
    if state.capacity_factor is None:
        assert state.capacity is None and state.num_dropped == 0
        assert not any(h for _, _, h in bars)
    else:
        capacity = expert_capacity(record.num_tokens, record.num_experts, record.top_k, state.capacity_factor)
        kept = apply_capacity(record.expert_indices, record.num_experts, capacity)
        assert state.capacity == capacity and state.num_dropped == int((~kept).sum())
        assert max(state.kept_per_expert) <= capacity
        over = {e for e, n in enumerate(state.routed_per_expert) if n > capacity}
        assert {i for i, _, h in bars if h} == over
    assert state.drop_rate == shown(explorer, "drop-rate") == state.num_dropped / state.num_assignments
    assert state.switch_loss == pytest.approx(shown(explorer, "switch"))
    assert state.switch_loss == pytest.approx(float(explorer.runs[state.coef].switch_loss[-1]))
    assert len(re.findall(r"<polyline data-series", explorer.steps_chart.value)) == len(state.shares)
    assert explorer.message.value == ""


def test_every_grid_point(explorer):
    for coef_label in explorer.coef_slider.options:
        explorer.coef_slider.value = coef_label
        for factor_label in explorer.factor_slider.options:
            explorer.factor_slider.value = factor_label
            assert explorer.state.coef == float(coef_label)
            expected = None if factor_label == DROPLESS else float(factor_label)
            assert explorer.state.capacity_factor == expected
            assert_consistent(explorer)


def test_precomputed_states_equal_a_fresh_computation(explorer):
    for (coef, factor), state in explorer.states.items():
        assert explorer.compute(coef, factor) == state


def test_balancing_loss_balances_and_larger_capacity_drops_less(explorer):
    explorer.factor_slider.value = "1"
    explorer.coef_slider.value = "0"
    without = explorer.state
    explorer.coef_slider.value = "0.1"
    with_loss = explorer.state
    assert with_loss.switch_loss < without.switch_loss and max(with_loss.shares) < max(without.shares)
    rates = []
    for label in ("0.75", "1", "1.5", DROPLESS):
        explorer.factor_slider.value = label
        rates.append(explorer.state.drop_rate)
    assert rates == sorted(rates, reverse=True) and rates[-1] == 0


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="coefs"):
        balance_explorer(coefs=(-1.0,), progress=False)
    with pytest.raises(ValueError, match="factors"):
        balance_explorer(factors=(0.0,), progress=False)
    with pytest.raises(ValueError, match="at least one"):
        balance_explorer(coefs=(), progress=False)


def test_update_time_is_measured(explorer):
    pairs = [(c, f) for c in explorer.coef_slider.options for f in explorer.factor_slider.options]
    times = []
    for i in range(50):
        coef, factor = pairs[i % len(pairs)]
        start = time.perf_counter()
        explorer.coef_slider.value = coef
        explorer.factor_slider.value = factor
        times.append(time.perf_counter() - start)
    print(f"balance explorer: median update (both sliders) {1e3 * statistics.median(times):.2f} ms over 50")
    assert_consistent(explorer)


def test_training_chart_has_step_ticks():
    from moe_teach.widgets.common import _step_ticks, svg_line_chart

    assert _step_ticks(80) == [0, 20, 40, 60]
    assert _step_ticks(1) == [0] and _step_ticks(6) == [0, 1, 2, 3, 4, 5]
    svg = svg_line_chart([[0.5, 0.5]] * 80)
    assert re.findall(r'data-step-tick="(\d+)"', svg) == ["0", "20", "40", "60"]
