import pytest
import torch

from moe_teach import BlockConfig, MoEConfig
from moe_teach.counting import active_parameters, count_parameters
from moe_teach.experts import Expert
from moe_teach.lessons import performance, sweep_reading
from moe_teach.lessons.performance import (
    STAGES,
    counted_on_meta,
    find_config,
    flop_saving,
    interleaved_timings,
    layer_counts,
    lm_parameter_formula,
    make_layers,
    median_seconds,
    moe_forward_breakdown,
    stage_sum,
    sweep,
    training_memory_bytes,
)
from moe_teach.lm.model import LMConfig


def test_layer_counts_match_built_layers():
    layers = make_layers(dim=16, hidden=8, num_experts=4, top_k=2)
    counts = layer_counts(16, 8, 4, 2)
    for name, layer in layers.items():
        assert counts[name]["params"] == count_parameters(layer)
    assert counts["moe"]["active_params"] == active_parameters(torch.nn.Sequential(layers["moe"]))


def test_flop_saving_top2_of_4_is_half_minus_router():
    saving = flop_saving(4, 2, dim=64, hidden=64)
    assert 0.45 < saving["dense-total"] < 0.5
    assert saving["dense-active"] < 0  # the router costs a little extra
    assert flop_saving(4, 2, 64, 64, seq_len=128)["dense-total"] < saving["dense-total"]


def test_training_memory_counts_saved_activations():
    torch.manual_seed(0)
    layer = Expert(8, 16, 8, "relu")
    param_bytes = 4 * count_parameters(layer)
    small = training_memory_bytes(layer, torch.randn(10, 8, requires_grad=True))
    large = training_memory_bytes(layer, torch.randn(100, 8, requires_grad=True))
    assert small > 2 * param_bytes
    assert large > small
    assert training_memory_bytes(layer, torch.randn(10, 8, requires_grad=True)) == small  # deterministic
    assert all(p.grad is None for p in layer.parameters())


def test_sweep_rows():
    rows = sweep(experts=(2, 4), top_ks=(1, 4), tokens=32, dim=8, hidden=8, repeats=1, progress=False)
    pairs = {(r["num_experts"], r["top_k"]) for r in rows}
    assert pairs == {(2, 1), (4, 1), (4, 4)}  # k > E skipped
    assert len(rows) == 3 * len(pairs)
    for r in rows:
        assert r["forward_s"] > 0 and r["forward_backward_s"] > 0 and r["memory_bytes"] > 0
        assert r["forward_spread"] >= 0 and r["forward_backward_spread"] >= 0
        assert r["active_params"] <= r["params"]
    dense = [r for r in rows if r["model"] == "dense-active" and r["top_k"] == 1]
    assert dense[0]["forward_s"] == dense[1]["forward_s"]  # one width, measured once, reused


def test_interleaved_timings_times_every_case_in_every_round():
    calls = []
    cases = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    timings = interleaved_timings(cases, repeats=6, rounds=3, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    rounds = [calls[3 + 6 * i: 9 + 6 * i] for i in range(3)]
    for one_round in rounds:  # each case twice in a row, every case in every round
        assert sorted(one_round) == ["a", "a", "b", "b", "c", "c"]
        assert one_round[0::2] == one_round[1::2]
    assert {name: len(t.times) for name, t in timings.items()} == {"a": 6, "b": 6, "c": 6}
    calls.clear()
    interleaved_timings(cases, repeats=4, warmup=0)  # default: one call per round
    assert len(calls) == 12 and all(sorted(calls[3 * i: 3 * i + 3]) == ["a", "b", "c"] for i in range(4))


def test_breakdown_has_every_stage_and_they_sum():
    stages = moe_forward_breakdown(tokens=64, dim=8, hidden=8, num_experts=4, top_k=2, repeats=2)
    assert set(stages) == set(STAGES) | {"moe_total", "dense_active"}
    assert all(seconds > 0 for seconds in stages.values())
    assert stage_sum(stages) == pytest.approx(sum(stages[name] for name in STAGES))
    assert stage_sum(stages) < sum(stages.values())  # the whole layer and dense are not stages


def test_stage_sum_names_missing_stages():
    with pytest.raises(ValueError, match="record_aux"):
        stage_sum({name: 1.0 for name in STAGES if name != "record_aux"})


def test_parameter_formula_matches_metrics_on_meta_device():
    for config in (
        LMConfig(vocab_size=50, block=BlockConfig(hidden_dim=32, moe=MoEConfig(num_experts=8, top_k=1))),
        LMConfig(vocab_size=50, block=BlockConfig(moe=None), tie_weights=False),
    ):
        assert lm_parameter_formula(config) == counted_on_meta(config)


def test_find_config_hits_the_claim():
    config = find_config(active_target=12e6, total_target=100e6)
    total, active = counted_on_meta(config)
    assert total == pytest.approx(100e6, rel=0.1) and active == pytest.approx(12e6, rel=0.1)


def test_median_seconds_rejects_bad_repeats():
    with pytest.raises(ValueError, match="repeats"):
        median_seconds(lambda: None, repeats=0)


def _fake_rows():
    rows = []
    for e, k, moe_s, total_s in [(4, 1, 2.0, 1.0), (4, 2, 0.5, 1.0), (2, 1, 3.0, 1.0), (2, 2, 5.0, 1.0)]:
        counts = performance.layer_counts(8, 8, e, k)
        rows.append({"model": "moe", "num_experts": e, "top_k": k, "forward_s": moe_s, **counts["moe"]})
        rows.append({"model": "dense-total", "num_experts": e, "top_k": k, "forward_s": total_s,
                     **counts["dense-total"]})
        rows.append({"model": "dense-active", "num_experts": e, "top_k": k, "forward_s": 1.0,
                     **counts["dense-active"]})
    return rows


def test_slower_than_dense_total_needs_both_a_flop_saving_and_a_slower_time():
    found = sweep_reading.slower_than_dense_total(_fake_rows(), min_flop_ratio=1.9)
    # (4, 1): FLOP ratio 3.2 and slower -> listed; (4, 2): faster; (2, 1): slower, but the router
    # leaves its FLOP ratio at 1.78, under 1.9; (2, 2): no FLOP saving at all
    assert [(f["num_experts"], f["top_k"]) for f in found] == [(4, 1)]
    assert found[0]["time_ratio"] == 2.0 and found[0]["flop_ratio"] > 3


def test_bytes_moved_counts_weights_and_the_two_copies():
    moved = sweep_reading.bytes_moved_per_forward(tokens=16, dim=4, hidden=8, num_experts=4, top_k=2)
    assert moved["moe_weights"] == 4 * 4 * (4 * 8 + 8 + 8 * 4 + 4)
    assert moved["dense_active_weights"] == 4 * (4 * 16 + 16 + 16 * 4 + 4)
    assert moved["gather_scatter"] == 4 * 2 * 16 * 2 * 4
    assert sweep_reading.bytes_moved_per_forward(1, 4, 8, 4, 2)["moe_weights"] == 2 * 4 * (4 * 8 + 8 + 8 * 4 + 4)


def test_plot_sweep_has_one_row_per_k_three_lines_each_and_one_legend():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = performance.sweep(experts=(2, 4), top_ks=(1, 2), tokens=32, dim=8, hidden=8, repeats=1, progress=False)
    fig = sweep_reading.plot_sweep(rows, [("params", "parameters", 1), ("forward_s", "forward (ms)", 1e3)],
                                 top_ks=(1, 2))
    axes = fig.axes
    assert len(axes) == 4 and all(len(ax.lines) == 3 for ax in axes)
    assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in axes)
    moe_line = next(line for line in axes[0].lines if line.get_label() == "moe")
    assert moe_line.get_zorder() > max(line.get_zorder() for line in axes[0].lines if line is not moe_line)
    plt.close(fig)


def test_overhead_and_matmul_rate_are_positive():
    assert 0 < sweep_reading.expert_call_overhead(dim=8, hidden=8, repeats=5) < 1
    assert sweep_reading.square_matmul_gflops(n=64, repeats=2) > 0
