"""The collapse experiment of lesson 05: seeded, short, and computed both ways."""

import matplotlib.pyplot as plt
import pytest
import torch

from moe_teach import apply_capacity, expert_capacity
from moe_teach.lessons.balance import (
    BalanceConfig,
    capacity_drops,
    expert_shares,
    make_cluster_task,
    plot_cluster_expert_heatmap,
    plot_token_expert_heatmap,
    plot_utilisation,
    route,
    split_task,
    train_balance,
)


@pytest.fixture(scope="module")
def task():
    return split_task(make_cluster_task(512, seed=0))[0]


@pytest.fixture(scope="module")
def runs(task):
    return {coef: train_balance(task, BalanceConfig(switch_coef=coef)) for coef in (0.0, 0.1)}


def test_task_is_seeded_and_leaves_the_global_seed_alone():
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    first, again = make_cluster_task(64, seed=3), make_cluster_task(64, seed=3)
    assert torch.equal(first.x, again.x) and torch.equal(first.y, again.y)
    assert not torch.equal(first.x, make_cluster_task(64, seed=4).x)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert first.x.shape == (64, 8) and first.y.shape == (64, 4) and first.cluster.shape == (64,)
    train, held = split_task(first)
    assert len(train) + len(held) == 64 and torch.equal(torch.cat([train.x, held.x]), first.x)


def test_without_the_balancing_loss_the_router_collapses_more(runs):
    without, with_loss = runs[0.0], runs[0.1]
    assert without.switch_loss[-1] > with_loss.switch_loss[-1]
    assert without.max_share > with_loss.max_share
    assert without.max_share > without.shares[0].max()          # collapse grows during training
    assert with_loss.switch_loss[-1] >= 1 - 1e-5                 # the convention's minimum is 1


def test_runs_are_reproducible_and_restore_the_thread_count(task, runs):
    threads = torch.get_num_threads()
    again = train_balance(task, BalanceConfig(switch_coef=0.0))
    assert torch.get_num_threads() == threads
    assert torch.equal(again.shares, runs[0.0].shares)


def test_recorded_shares_and_drops(task, runs):
    run = runs[0.0]
    assert run.shares.shape == (run.config.steps, run.config.num_experts)
    assert torch.allclose(run.shares.sum(dim=1), torch.ones(run.config.steps))
    assert torch.all(run.drop_rate == 0)                       # dropless run
    capped = train_balance(task, BalanceConfig(top_k=2, capacity_factor=1.0, steps=5))
    assert torch.all(capped.drop_rate >= 0) and capped.drop_rate.max() > 0


def test_z_loss_keeps_logits_small(task, runs):
    with_z = train_balance(task, BalanceConfig(z_coef=0.1))
    assert with_z.z_loss[-1] < runs[0.0].z_loss[-1]


def test_capacity_drops_matches_the_package(task, runs):
    record = route(runs[0.0].layer, task.x)
    kept, capacity = capacity_drops(record.expert_indices, record.num_experts, 1.0)
    assert capacity == expert_capacity(record.num_tokens, record.num_experts, record.top_k, 1.0)
    assert torch.equal(kept, apply_capacity(record.expert_indices, record.num_experts, capacity))
    kept, capacity = capacity_drops(record.expert_indices, record.num_experts, None)
    assert capacity is None and bool(kept.all())
    assert torch.allclose(expert_shares(record).sum(), torch.tensor(1.0))


def test_plots_are_labelled(task, runs):
    run = train_balance(task, BalanceConfig(top_k=2, capacity_factor=0.75, steps=3))
    record = route(run.layer, task.x)
    record_capped = run.layer(task.x, return_record=True)[1]
    for ax in (plot_utilisation(runs[0.0]), plot_token_expert_heatmap(record_capped),
               plot_cluster_expert_heatmap(record, task.cluster)):
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    plt.close("all")


def test_heatmaps_show_every_token_and_the_possible_colour_range(task):
    run = train_balance(task, BalanceConfig(top_k=2, capacity_factor=0.75, steps=3))
    record = run.layer(task.x, return_record=True)[1]
    assert record.num_dropped > 0
    ax = plot_token_expert_heatmap(record)
    assert ax.images[0].get_array().shape == (record.num_tokens, record.num_experts)   # every token
    marked = {(round(x), round(y)) for x, y in ax.collections[0].get_offsets()}
    tokens, slots = torch.where(~record.kept)
    assert marked == {(int(record.expert_indices[t, s]), int(t)) for t, s in zip(tokens, slots)}
    ax = plot_cluster_expert_heatmap(record, task.cluster)
    assert ax.images[0].get_clim() == (0, 1 / record.top_k)       # one expert holds at most 1/k
    assert ax.images[0].get_array().max() <= 1 / record.top_k + 1e-6
    plt.close("all")


def test_bad_config_names_the_argument():
    with pytest.raises(ValueError, match="top_k"):
        BalanceConfig(num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="switch_coef"):
        BalanceConfig(switch_coef=-1.0)
    with pytest.raises(ValueError, match="capacity_factor"):
        BalanceConfig(capacity_factor=0.0)
    with pytest.raises(ValueError, match="train_fraction"):
        split_task(make_cluster_task(8), train_fraction=1.0)
