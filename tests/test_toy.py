"""Tests for the toy task of lessons 01 and 02 (moe_teach.lessons.toy)."""

import math

import pytest
import torch

from moe_teach import Expert, MoELayer
from moe_teach.lessons.toy import (
    NUM_REGIONS,
    TOY_RULES,
    ToyData,
    input_grid,
    make_toy_data,
    mse_by_region,
    region_of,
    toy_target,
    train_regression,
)


def test_shapes_and_dtypes():
    data = make_toy_data(300, seed=0)
    assert isinstance(data, ToyData) and len(data) == 300
    assert data.x.shape == (300, 2) and data.x.dtype == torch.float32
    assert data.y.shape == (300, 1) and data.y.dtype == torch.float32
    assert data.region.shape == (300,) and data.region.dtype == torch.int64
    assert data.x.abs().max() <= 1


def test_same_seed_same_data_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first, second = make_toy_data(64, seed=7), make_toy_data(64, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(first.x, second.x) and torch.equal(first.y, second.y)
    assert not torch.equal(first.x, make_toy_data(64, seed=8).x)


def test_regions_are_quadrants_and_all_present():
    data = make_toy_data(2000, seed=0)
    expected = {0: (1, 1), 1: (-1, 1), 2: (-1, -1), 3: (1, -1)}
    for region, (sign1, sign2) in expected.items():
        points = data.x[data.region == region]
        assert len(points) > 300
        assert ((points[:, 0] >= 0) == (sign1 > 0)).all() and ((points[:, 1] >= 0) == (sign2 > 0)).all()
    assert torch.equal(region_of(torch.tensor([[0.0, 0.0]])), torch.tensor([0]))


def test_target_follows_each_regions_own_rule():
    data = make_toy_data(500, seed=3)
    for region, (_, rule) in enumerate(TOY_RULES):
        inside = data.region == region
        assert torch.equal(data.y[inside, 0], rule(data.x[inside]))
    assert torch.equal(toy_target(data.x), data.y)


def test_regions_really_have_different_rules():
    """Every pair of rules disagrees clearly on the same points, so no one rule fits two regions."""
    points = make_toy_data(1000, seed=1).x
    for i in range(NUM_REGIONS):
        for j in range(i + 1, NUM_REGIONS):
            gap = (TOY_RULES[i][1](points) - TOY_RULES[j][1](points)).abs().mean()
            assert gap > 0.3, (TOY_RULES[i][0], TOY_RULES[j][0], float(gap))


def test_input_grid_layout():
    x1, x2, points = input_grid(5)
    assert x1.shape == x2.shape == (5, 5) and points.shape == (25, 2)
    assert torch.equal(points[1 * 5 + 3], torch.stack([x1[1, 3], x2[1, 3]]))
    assert points.min() == -1 and points.max() == 1


@pytest.mark.parametrize("model_fn", [lambda: Expert(2, 16, 1),
                                      lambda: MoELayer(2, 1, num_experts=4, top_k=4, hidden_dim=8)])
def test_training_lowers_the_loss_and_is_deterministic(model_fn):
    data = make_toy_data(256, seed=0)
    threads_before = torch.get_num_threads()
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = model_fn()
        runs.append(train_regression(model, data, steps=40, lr=1e-2, progress=False))
    assert runs[0] == runs[1]
    assert torch.get_num_threads() == threads_before        # restored after training
    assert len(runs[0]) == 40 and runs[0][-1] < runs[0][0]
    per_region = mse_by_region(model, data)
    assert per_region.shape == (NUM_REGIONS,) and all(math.isfinite(v) for v in per_region.tolist())


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="num_points"):
        make_toy_data(0)
    with pytest.raises(ValueError, match="x must have last dimension 2"):
        region_of(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="steps"):
        train_regression(Expert(2, 4, 1), make_toy_data(8), steps=0)


def test_expert_output_plot_marks_a_region_too_thin_to_see():
    """An expert that wins a sliver of the plane gets a star and its share in the panel title."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from moe_teach import MoELayer
    from moe_teach.lessons.plots import SLIVER, plot_expert_outputs

    torch.manual_seed(0)
    layer = MoELayer(2, 1, num_experts=3, top_k=3, hidden_dim=4)
    with torch.no_grad():   # expert 2 wins only a thin wedge around the direction (1, 0)
        layer.router.proj.weight.copy_(torch.tensor([[0.0, 1.0], [0.0, -1.0], [0.05, 0.0]]))
    fig = plot_expert_outputs(layer)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert any("the star" in t and t.startswith("expert 2") for t in titles), titles
    assert not any("the star" in t for t in titles if not t.startswith("expert 2"))
    assert SLIVER == 0.05
    plt.close(fig)
