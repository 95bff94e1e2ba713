"""Drive the capacity explorer like a learner would (no browser) and recount what it shows."""

import html
import math
import re
import statistics
import time

import pytest

from moe_teach.widgets import capacity_explorer

CELL = re.compile(r'<rect data-token="(\d+)" data-expert="(\d+)" data-slot="(\d+)" data-kept="(true|false)"')
CELL_LABEL = re.compile(r'data-slot="(\d+)" data-kept="(true|false)"[^>]*/><text[^>]*>([^<]*)</text>')


def shown_cells(explorer):
    """{(token, slot): (expert, kept)} for every chosen cell drawn in the grid."""
    return {(int(t), int(s)): (int(e), k == "true") for t, e, s, k in CELL.findall(explorer.grid.value)}


def shown_number(explorer, name):
    return int(re.search(rf'data-{name}="(\d+)"', explorer.summary.value).group(1))


def recount(cells, num_tokens, top_k, capacity):
    """Serve every first choice (in token order), then every second choice, ... up to capacity."""
    load, kept = {}, {}
    for slot in range(top_k):
        for token in range(num_tokens):
            expert, _ = cells[(token, slot)]
            kept[(token, slot)] = load.get(expert, 0) < capacity
            load[expert] = load.get(expert, 0) + kept[(token, slot)]
    return kept, load


def assert_display_follows_the_capacity_rule(explorer, factor):
    state = explorer.state
    num_tokens, num_experts, top_k = state.num_tokens, state.num_experts, state.top_k
    capacity = math.ceil(factor * num_tokens * top_k / num_experts)
    cells = shown_cells(explorer)
    assert len(cells) == num_tokens * top_k
    expected = explorer.logits.topk(top_k, dim=-1).indices.tolist()   # router's choices
    assert [[cells[(t, s)][0] for s in range(top_k)] for t in range(num_tokens)] == expected
    kept, load = recount(cells, num_tokens, top_k, capacity)
    assert {key: k for key, (_, k) in cells.items()} == kept
    assert max(load.values()) <= capacity                                   # no expert over capacity
    dropped = sum(not k for k in kept.values())
    assert shown_number(explorer, "dropped") == dropped == state.num_dropped
    assert shown_number(explorer, "capacity") == capacity == state.capacity
    for expert in range(num_experts):   # a later choice kept at an expert => all earlier ones kept there
        slots = [(s, k) for (t, s), (e, k) in cells.items() if e == expert]
        for slot, was_kept in slots:
            if was_kept:
                assert all(k for s, k in slots if s < slot)
    fully = [t for t in range(num_tokens) if not any(kept[(t, s)] for s in range(top_k))]
    assert shown_number(explorer, "fully-dropped") == len(fully) and state.fully_dropped == fully
    assert state.error is None and explorer.message.value == ""


@pytest.mark.parametrize("factor", [0.25, 0.5, 0.75, 1.0, 1.25, 2.0, 3.0])
def test_slider_values_follow_the_capacity_rule(factor):
    explorer = capacity_explorer()
    explorer.factor_slider.value = factor
    assert explorer.state.capacity_factor == factor
    assert explorer.factor_text.value == f"{factor:g}"
    assert_display_follows_the_capacity_rule(explorer, factor)


def test_small_factor_drops_and_large_factor_does_not():
    explorer = capacity_explorer()
    explorer.factor_slider.value = 0.5
    assert explorer.state.num_dropped > 0
    explorer.factor_text.value = "1000"
    assert explorer.state.num_dropped == 0 and explorer.state.capacity_factor == 1000
    assert all(all(row) for row in explorer.state.kept)
    assert explorer.factor_slider.value == explorer.factor_slider.max   # clamped, not fired back
    assert_display_follows_the_capacity_rule(explorer, 1000)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_every_k(top_k):
    explorer = capacity_explorer(num_tokens=12, num_experts=4)
    for factor in ("0.3", "0.8", "1.1", "1.6"):
        explorer.k_slider.value = top_k
        explorer.factor_text.value = factor
        assert explorer.state.top_k == top_k
        assert_display_follows_the_capacity_rule(explorer, float(factor))


@pytest.mark.parametrize("bad, expected", [
    ("abc", "'abc' is not a number"),
    ("", "The box is empty"),
    ("-1", "'-1' is not allowed"),
    ("0", "'0' is not allowed"),
    ("nan", "'nan' is not allowed"),
    ("1e30", "'1e30' is too large"),
    ("inf", "'inf' is not allowed"),
])
def test_malformed_factor_shows_a_message_and_the_explorer_keeps_working(bad, expected):
    explorer = capacity_explorer()
    explorer.factor_slider.value = 0.5
    grid_before = explorer.grid.value
    explorer.factor_text.value = bad
    assert expected in html.unescape(explorer.message.value) and explorer.state.error is not None
    assert explorer.state.capacity_factor == 0.5 and explorer.grid.value == grid_before
    explorer.factor_slider.value = 1.5                       # the slider still works and clears the message
    assert explorer.message.value == "" and explorer.state.capacity_factor == 1.5
    assert_display_follows_the_capacity_rule(explorer, 1.5)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="top_k"):
        capacity_explorer(num_experts=3, top_k=4)
    with pytest.raises(TypeError, match="num_tokens"):
        capacity_explorer(num_tokens=2.5)
    with pytest.raises(ValueError, match=r"capacity_factor must be a number > 0, got -1"):
        capacity_explorer(capacity_factor=-1)


def test_update_time_is_measured():
    explorer = capacity_explorer()
    factors = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]
    times = []
    for i in range(50):
        start = time.perf_counter()
        explorer.factor_slider.value = factors[i % len(factors)]
        times.append(time.perf_counter() - start)
    print(f"capacity explorer: median update {1e3 * statistics.median(times):.2f} ms over 50 updates")
    assert_display_follows_the_capacity_rule(explorer, factors[49 % len(factors)])


def test_every_cell_shows_its_choice_number_and_dropped_ones_an_x():
    explorer = capacity_explorer()
    explorer.factor_slider.value = 0.5
    labels = CELL_LABEL.findall(explorer.grid.value)
    assert len(labels) == explorer.state.num_tokens * explorer.state.top_k
    assert any(kept == "false" for _, kept, _ in labels)
    for slot, kept, label in labels:
        number = str(int(slot) + 1)
        assert html.unescape(label) == (number if kept == "true" else number + "\u2717")


def test_dropped_in_slot_lists_the_tokens_with_that_choice_dropped():
    explorer = capacity_explorer()
    for factor in (0.5, 1.0, 2.0):
        explorer.factor_slider.value = factor
        state = explorer.state
        for slot in range(state.top_k):
            assert state.dropped_in_slot(slot) == [t for t, row in enumerate(state.kept) if not row[slot]]


@pytest.mark.parametrize("typed, limit", [("10", 3.0), ("0.1", 0.25)])
def test_typed_value_outside_the_slider_range_is_used_and_noted(typed, limit):
    explorer = capacity_explorer()
    explorer.factor_text.value = typed
    state = explorer.state
    assert state.capacity_factor == float(typed) and explorer.factor_slider.value == limit
    assert state.note is not None
    assert f"limit {limit:g}" in state.note and f"typed value {typed}" in state.note
    assert "typed value" in html.unescape(explorer.note.value) and explorer.message.value == ""
    assert_display_follows_the_capacity_rule(explorer, float(typed))
    explorer.k_slider.value = 1                                   # another control keeps the typed value
    assert explorer.state.capacity_factor == float(typed) and explorer.state.note is not None
    explorer.factor_slider.value = 1.5                            # moving the slider applies the slider
    assert explorer.state.capacity_factor == 1.5 and explorer.factor_text.value == "1.5"
    assert explorer.state.note is None and explorer.note.value == ""
    explorer.factor_text.value = typed                            # typing it again works again
    assert explorer.state.capacity_factor == float(typed)
    explorer.factor_text.value = "2"                              # in range: the note goes away
    assert explorer.state.note is None and explorer.factor_slider.value == 2.0


def summary_text(explorer):
    return html.unescape(re.sub(r"<[^>]+>", "", explorer.summary.value))


def test_summary_uses_singular_and_plural_correctly():
    explorer = capacity_explorer()
    seen = set()
    for factor in [0.05 * i for i in range(1, 61)]:
        explorer.factor_text.value = f"{factor:g}"
        text, state = summary_text(explorer), explorer.state
        capacity_words = "assignment per expert" if state.capacity == 1 else "assignments per expert"
        assert f"= {state.capacity} {capacity_words}." in text
        lost = len(state.fully_dropped)
        assert f"{lost} {'token' if lost == 1 else 'tokens'} lost every expert" in text
        assert "(s)" not in text
        seen.update({("capacity", state.capacity == 1), ("lost", min(lost, 2))})
    assert {("capacity", True), ("capacity", False), ("lost", 0), ("lost", 1), ("lost", 2)} <= seen


def test_dropped_cells_are_drawn_red():
    """The lesson calls dropped cells red: their fill is a saturated red, distinct from every slot colour."""
    from moe_teach.widgets.capacity import DROPPED_FILL, SLOT_COLOURS

    red, green, blue = (int(DROPPED_FILL[i:i + 2], 16) for i in (1, 3, 5))
    assert red >= 200 and green <= 80 and blue <= 80, DROPPED_FILL
    assert DROPPED_FILL not in SLOT_COLOURS
    explorer = capacity_explorer()
    explorer.factor_slider.value = 0.5
    dropped = re.findall(r'data-kept="false"[^>]*fill="([^"]+)"', explorer.grid.value)
    assert dropped and set(dropped) == {DROPPED_FILL}
