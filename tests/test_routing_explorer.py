"""Drive the routing explorer like a learner would (no browser) and check what it shows."""

import html
import math
import re

import pytest
import torch

from moe_teach import moe_flops_per_token
from moe_teach.widgets import routing, routing_explorer
from moe_teach.widgets.routing import CUSTOM, EXAMPLES, INPUT_DIM, MAX_ABS_VALUE, format_values

BAR = re.compile(r'<rect data-index="(\d+)" data-value="([^"]+)" data-highlight="(true|false)"')


def bars(explorer):
    """[(index, value, highlighted)] for every bar drawn in the SVG chart."""
    return [(int(i), float(v), h == "true") for i, v, h in BAR.findall(explorer.chart.value)]


def shown_output(explorer):
    text = re.search(r"<code data-output>\[(.*?)\]</code>", explorer.output_box.value).group(1)
    return [float(v) for v in text.split(",")]


def shown_compute_share(explorer):
    return float(re.search(r'data-compute-share="([^"]+)"', explorer.compute_box.value).group(1))


def assert_display_consistent(explorer):
    state = explorer.state
    drawn = bars(explorer)
    assert [i for i, _, _ in drawn] == list(range(state.num_experts))
    assert math.isclose(sum(v for _, v, _ in drawn), 1.0, abs_tol=1e-4)          # shown probabilities
    assert math.isclose(sum(state.probs), 1.0, abs_tol=1e-5)
    top_k = set(torch.tensor(state.probs).topk(state.top_k).indices.tolist())
    assert {i for i, _, h in drawn if h} == top_k == set(state.chosen)
    assert len(shown_output(explorer)) == explorer.output_dim == len(state.output)
    assert shown_compute_share(explorer) == state.top_k / state.num_experts
    assert state.compute_share == state.top_k / state.num_experts
    assert explorer.message.value == "" and state.error is None


def test_default_view():
    explorer = routing_explorer()
    assert explorer.state.num_experts == 4 and explorer.state.top_k == 2
    assert_display_consistent(explorer)


def test_each_example_from_the_dropdown():
    explorer = routing_explorer(example="random")
    seen = set()
    for name, values in EXAMPLES.items():
        explorer.example_dropdown.value = name
        assert explorer.values_text.value == format_values(values)
        assert explorer.state.values == values          # the text box shows the example exactly
        assert_display_consistent(explorer)
        seen.add(tuple(round(p, 6) for p in explorer.state.probs))
    assert len(seen) == len(EXAMPLES)   # different tokens, different routing


def test_typed_values_match_the_layer_called_directly():
    explorer = routing_explorer()
    explorer.values_text.value = "0.5, -1, 2, 0, 0, 3.5, -2, 1, 1, 0.25"
    values = [0.5, -1, 2, 0, 0, 3.5, -2, 1, 1, 0.25]
    assert explorer.state.values == values
    with torch.no_grad():
        expected, record = explorer.layer(torch.tensor([values]), return_record=True)
    assert explorer.state.output == pytest.approx(expected[0].tolist())
    assert shown_output(explorer) == pytest.approx(expected[0].tolist(), abs=1e-4)
    assert explorer.state.probs == pytest.approx(record.probs[0].tolist())
    assert_display_consistent(explorer)


def test_every_slider_setting():
    explorer = routing_explorer()
    for num_experts in range(2, 9):
        explorer.experts_slider.value = num_experts
        assert explorer.k_slider.max == num_experts
        for top_k in range(1, num_experts + 1):
            explorer.k_slider.value = top_k
            state = explorer.state
            assert (state.num_experts, state.top_k) == (num_experts, top_k)
            assert (explorer.layer.num_experts, explorer.layer.top_k) == (num_experts, top_k)
            assert sum(h for _, _, h in bars(explorer)) == top_k
            sizes = (INPUT_DIM, explorer.hidden_dim, num_experts)
            assert state.sparse_flops == moe_flops_per_token(*sizes, top_k, explorer.output_dim)
            assert state.dense_flops == moe_flops_per_token(*sizes, num_experts, explorer.output_dim)
            assert_display_consistent(explorer)


def test_k_is_clamped_when_experts_shrink():
    explorer = routing_explorer()
    explorer.experts_slider.value = 8
    explorer.k_slider.value = 7
    explorer.experts_slider.value = 3
    assert explorer.k_slider.value == 3 and explorer.k_slider.max == 3
    assert explorer.state.top_k == 3 and explorer.layer.top_k == 3
    assert_display_consistent(explorer)


def test_k1_keeps_the_raw_probability():
    explorer = routing_explorer(top_k=1)
    state = explorer.state
    assert state.weights[0] == pytest.approx(state.probs[state.chosen[0]])
    assert state.weights[0] < 1


def test_rebuilding_is_deterministic_and_leaves_the_global_seed_alone():
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    explorer = routing_explorer()
    first = list(explorer.state.probs)
    explorer.experts_slider.value = 6
    explorer.experts_slider.value = 4
    assert explorer.state.probs == first
    assert routing_explorer().state.probs == first
    assert routing_explorer(seed=1).state.probs != first
    assert torch.equal(torch.random.get_rng_state(), before)


@pytest.mark.parametrize("bad, expected", [
    ("1, 2, 3, 4, 5, 6, 7, 8, 9", "Expected 10 comma-separated values, got 9"),
    ("abc", "'abc' is not a number"),
    ("", "Type 10 comma-separated numbers"),
    ("1, 2, 3, 4, 5, 6, 7, 8, 9, nan", "not a finite number"),
])
def test_malformed_input_shows_a_message_and_the_explorer_keeps_working(bad, expected):
    explorer = routing_explorer()
    chart_before = explorer.chart.value
    explorer.values_text.value = bad
    assert expected in html.unescape(explorer.message.value) and explorer.state.error is not None
    assert explorer.chart.value == chart_before
    explorer.k_slider.value = 3              # sliders still work, the message stays (input still bad)
    assert explorer.state.top_k == 3 and expected in html.unescape(explorer.message.value)
    explorer.values_text.value = "1, 0, 0, 0, 0, 0, 0, 0, 0, 1"
    assert explorer.message.value == "" and explorer.state.error is None
    assert explorer.state.values == [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert_display_consistent(explorer)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="num_experts must be between 2 and 8"):
        routing_explorer(num_experts=9)
    with pytest.raises(ValueError, match="top_k"):
        routing_explorer(num_experts=3, top_k=4)
    with pytest.raises(ValueError, match="example"):
        routing_explorer(example="zigzag")
    with pytest.raises(TypeError, match="output_dim"):
        routing_explorer(output_dim=2.5)


SPIKE = "0, 0, 0, 0, 3, 0, 0, 0, 0, 0"


@pytest.mark.parametrize("huge", ["1e40", str(MAX_ABS_VALUE * 10), f"-{MAX_ABS_VALUE * 2:g}"])
def test_huge_values_are_rejected_with_a_message(huge):
    explorer = routing_explorer()
    before = explorer.state
    explorer.values_text.value = huge + ", 2, 3, 4, 5, 6, 7, 8, 9, 10"
    assert "too large" in html.unescape(explorer.message.value)
    assert explorer.state.error is not None and explorer.state.values == before.values
    assert explorer.state.probs == before.probs and all(math.isfinite(p) for p in explorer.state.probs)


def test_a_non_finite_result_is_rejected_even_within_the_bound(monkeypatch):
    monkeypatch.setattr(routing, "MAX_ABS_VALUE", float("inf"))
    explorer = routing_explorer()
    before = explorer.state
    explorer.values_text.value = ", ".join(["3e38", "-3e38"] * (INPUT_DIM // 2))   # the layer overflows
    assert "not finite" in html.unescape(explorer.message.value)
    assert explorer.state.values == before.values
    assert all(math.isfinite(v) for v in explorer.state.probs + explorer.state.output)


def test_the_dropdown_follows_the_text_box():
    explorer = routing_explorer()
    assert explorer.example_dropdown.value == "linear ramp"
    explorer.values_text.value = "0.5, -1, 2, 0, 0, 3.5, -2, 1, 1, 0.25"
    assert explorer.example_dropdown.value == CUSTOM
    assert explorer.values_text.value == "0.5, -1, 2, 0, 0, 3.5, -2, 1, 1, 0.25"   # custom text is kept
    explorer.values_text.value = SPIKE                                             # typed an example exactly
    assert explorer.example_dropdown.value == "single spike"
    explorer.values_text.value = "abc"
    assert explorer.example_dropdown.value == CUSTOM


def test_picking_the_same_example_again_applies_it_after_an_invalid_entry():
    explorer = routing_explorer()
    ramp = explorer.values_text.value
    explorer.values_text.value = "1, 2"                          # invalid
    assert explorer.state.error is not None
    explorer.example_dropdown.value = "linear ramp"
    assert explorer.values_text.value == ramp and explorer.state.error is None
    assert explorer.message.value == "" and explorer.state.values == EXAMPLES["linear ramp"]
    assert_display_consistent(explorer)


def test_example_values_are_shown_rounded():
    for values in EXAMPLES.values():
        for text in format_values(values).split(", "):
            assert len(text.lstrip("-").replace(".", "")) <= 4 and "e" not in text and text != "-0"
    assert format_values([1.2246e-16, -0.0, -1e-12, 0.33333, 2.71828]) == "0, 0, 0, 0.333, 2.72"


def test_space_separated_values_ask_for_commas_and_a_trailing_comma_is_fine():
    explorer = routing_explorer()
    explorer.values_text.value = "1 2 3 4 5 6 7 8 9 10"
    assert "Separate the values with commas" in html.unescape(explorer.message.value)
    explorer.values_text.value = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
    assert explorer.state.error is None and explorer.state.values == list(range(1, 11))
    assert_display_consistent(explorer)


def test_singular_expert_in_the_compute_line():
    explorer = routing_explorer(top_k=1)
    assert "(router + 1 expert)" in explorer.compute_box.value
    explorer.k_slider.value = 2
    assert "(router + 2 experts)" in explorer.compute_box.value
