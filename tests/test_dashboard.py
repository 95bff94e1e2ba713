"""Drive the routing dashboard like a learner would (no browser) and compare what it shows with the model.

A small untrained model keeps these tests fast: its routing is as well defined as a trained one's.
"""

import html
import re

import pytest
import torch

from moe_teach import moe_layers
from moe_teach.lessons import routing_analysis as ra
from moe_teach.lessons import routing_views as rv
from moe_teach.lm.data import DOMAINS
from moe_teach.lm.evaluation import domain_expert_shares
from moe_teach.lm.model import LMConfig
from moe_teach.lm.training import build_model, encode_documents, prepare_data
from moe_teach.moe_layer import MoEConfig
from moe_teach.routing import apply_capacity, expert_capacity
from moe_teach.transformer import BlockConfig
from moe_teach.widgets import routing_dashboard
from moe_teach.widgets.dashboard import EMPTY_MESSAGE, time_update

TOKEN = re.compile(r'<span class="moe-token" ([^>]*)>')
ATTR = re.compile(r'([\w-]+)="([^"]*)"')
TEXT = "the bank reported that revenue rose four percent in the first quarter ."


def tiny_config(vocab_size, num_layers=2, top_k=2, max_seq_len=48):
    block = BlockConfig(dim=16, num_heads=2, hidden_dim=16, moe=MoEConfig(num_experts=4, top_k=top_k))
    return LMConfig(vocab_size=vocab_size, max_seq_len=max_seq_len, num_layers=num_layers, block=block)


@pytest.fixture(scope="module")
def tokenizer():
    return prepare_data(documents_per_domain=30, seed=0).tokenizer


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_model(tiny_config(len(tokenizer)), seed=3).eval()


@pytest.fixture
def dashboard(model, tokenizer):
    return routing_dashboard(model=model, tokenizer=tokenizer, text=TEXT)


def shown_tokens(dashboard, layer=None):
    """Attributes of every token span drawn (optionally only those of ``layer``), in order."""
    spans = [{k: html.unescape(v) for k, v in ATTR.findall(attrs)} for attrs in TOKEN.findall(dashboard.tokens.value)]
    return [s for s in spans if layer is None or s["data-layer"] == str(layer)]


def reference_routing(model, tokenizer, text):
    """``[L, T, k]`` chosen experts read straight from the layers' records (``<bos>`` removed)."""
    ids = tokenizer.encode(text, add_bos=True)[: model.config.max_seq_len]
    with torch.no_grad():
        model(torch.tensor([ids]))
    return [layer.last_record.expert_indices[1:].tolist() for layer in moe_layers(model)], \
        [layer.last_record.probs[1:] for layer in moe_layers(model)]


def test_tokens_show_the_models_first_choice_at_each_layer(dashboard, model, tokenizer):
    experts, _ = reference_routing(model, tokenizer, TEXT)
    for layer in range(2):
        dashboard.layer_buttons.value = layer
        spans = shown_tokens(dashboard)
        assert [s["data-token"] for s in spans] == TEXT.split()
        assert [int(s["data-expert"]) for s in spans] == [row[0] for row in experts[layer]]
        assert [int(s["data-second"]) for s in spans] == [row[1] for row in experts[layer]]
        assert {s["data-layer"] for s in spans} == {str(layer)}
        assert dashboard.state.experts[layer] == experts[layer]
    assert experts[0] != experts[1], "pick a text whose routing differs between the layers"


def test_all_layers_view_has_one_row_per_layer(dashboard, model, tokenizer):
    experts, _ = reference_routing(model, tokenizer, TEXT)
    dashboard.layer_buttons.value = "all"
    assert dashboard.state.shown_layers == [0, 1]
    assert dashboard.tokens.value.count('class="moe-row"') == 2
    for layer in range(2):
        assert [int(s["data-expert"]) for s in shown_tokens(dashboard, layer)] == [r[0] for r in experts[layer]]


def test_tooltip_lists_every_expert_probability_and_the_weights(dashboard, model, tokenizer):
    _, probs = reference_routing(model, tokenizer, TEXT)
    for t, span in enumerate(shown_tokens(dashboard, 0)):
        shown = [float(p) for p in re.findall(r"E\d (\d\.\d\d)", span["title"].split("\n")[1])]
        assert torch.allclose(torch.tensor(shown), probs[0][t], atol=0.005 + 1e-6)
        weights = dict(re.findall(r"E(\d) (\d\.\d\d)", span["title"].split("\n")[2]))
        assert set(map(int, weights)) == set(dashboard.state.experts[0][t])
        assert sum(float(w) for w in weights.values()) == pytest.approx(1.0, abs=0.011)  # renormalised top-2


def test_unknown_words_are_marked_and_named(dashboard):
    dashboard.text_box.value = "the zebra reported revenue"
    spans = shown_tokens(dashboard)
    assert [s["data-token"] for s in spans] == ["the", "<unk>", "reported", "revenue"]
    assert [s["data-unk"] for s in spans] == ["false", "true", "false", "false"]
    assert spans[1]["data-word"] == "zebra" and "zebra" in dashboard.note.value
    assert dashboard.state.error is None


def test_empty_text_shows_a_message_and_no_tokens(dashboard):
    for text in ("", "   \n "):
        dashboard.text_box.value = text
        assert shown_tokens(dashboard) == []
        assert dashboard.state.message == EMPTY_MESSAGE and html.escape(EMPTY_MESSAGE) in dashboard.message.value


def test_too_long_text_is_cut_with_a_note(dashboard, model):
    words = ("the bank " * 40).split()
    dashboard.text_box.value = " ".join(words)
    room = model.config.max_seq_len - 1
    assert len(shown_tokens(dashboard)) == room == len(dashboard.state.words)
    assert dashboard.state.cut == len(words) - room
    assert f"first {room} words" in dashboard.note.value and f"last {len(words) - room} word" in dashboard.note.value


def test_examples_and_validation_documents_fill_the_text_box(dashboard):
    for domain in DOMAINS:
        dashboard.example.value = domain
        assert dashboard.text_box.value == dashboard.examples[domain]
        assert next(d.domain for d in dashboard.corpus.validation if d.text == dashboard.text_box.value) == domain
    dashboard.example.value = "validation"
    dashboard.validation_index.value = 5
    assert dashboard.text_box.value == dashboard.corpus.validation[5].text
    dashboard.text_box.value = "my own words"
    assert dashboard.example.value == ""


@pytest.mark.parametrize("factor", [0.5, 1.0, 2.0])
def test_capacity_factor_shows_the_drops_of_the_text(dashboard, factor):
    dashboard.capacity.value = factor
    state = dashboard.state
    num_tokens = len(state.words)
    for layer in range(2):
        experts = torch.tensor(state.experts[layer])
        kept = apply_capacity(experts, 4, expert_capacity(num_tokens, 4, 2, factor))
        assert state.kept[layer] == kept.tolist()
        dashboard.layer_buttons.value = layer
        assert [s["data-dropped"] == "true" for s in shown_tokens(dashboard)] == (~kept.any(dim=1)).tolist()
        summary = re.search(rf'data-layer="{layer}" data-dropped-assignments="(\d+)"', dashboard.summary.value)
        assert int(summary.group(1)) == int((~kept).sum())
    if factor == 0.5:
        assert any(not all(row) for row in state.kept[0])


def test_dropless_drops_nothing(dashboard):
    dashboard.capacity.value = 0.0
    assert dashboard.state.capacity_factor is None and dashboard.summary.value == ""
    assert all(all(row) for layer in dashboard.state.kept for row in layer)


def test_heatmap_matches_the_training_modules_shares(dashboard, model, tokenizer):
    dashboard.view_buttons.value = "domains"
    data = encode_documents(dashboard.corpus.validation, tokenizer, model.config.max_seq_len)
    expected = domain_expert_shares(model, data)
    for layer in range(2):
        dashboard.layer_buttons.value = layer
        cells = re.findall(r'data-domain="(\w+)" data-expert="(\d)" data-share="([\d.]+)"', dashboard.view.value)
        assert len(cells) == len(DOMAINS) * 4
        for domain, expert, share in cells:
            assert float(share) == pytest.approx(float(expected[layer, DOMAINS.index(domain), int(expert)]), abs=1e-4)


def test_expert_cards_and_cross_layer_views(dashboard):
    dashboard.view_buttons.value = "experts"
    traffic = [float(v) for v in re.findall(r'class="moe-card" data-layer="0" data-expert="\d" data-traffic="([\d.]+)"',
                                            dashboard.view.value)]
    assert len(traffic) == 4 and sum(traffic) == pytest.approx(1.0, abs=1e-3)
    dashboard.view_buttons.value = "cross-layer"
    counts = [int(c) for c in re.findall(r'data-count="(\d+)"', dashboard.view.value)]
    table = dashboard.routing_table()
    assert len(counts) == 16 and sum(counts) == table.token_ids.numel()
    dashboard.view_buttons.value = "uncertainty"
    assert "mean entropy" in dashboard.view.value and "smallest margins" in dashboard.view.value


def test_single_layer_model_says_the_cross_layer_view_needs_two(tokenizer):
    model = build_model(tiny_config(len(tokenizer), num_layers=1), seed=0).eval()
    dashboard = routing_dashboard(model=model, tokenizer=tokenizer, text=TEXT)
    assert [value for _, value in dashboard.layer_buttons.options] == [0, "all"]
    dashboard.view_buttons.value = "cross-layer"
    assert "needs two MoE layers; this model has 1" in dashboard.view.value
    assert len(shown_tokens(dashboard)) == len(TEXT.split())


def test_top1_model_has_no_second_choice(tokenizer):
    model = build_model(tiny_config(len(tokenizer), top_k=1), seed=0).eval()
    dashboard = routing_dashboard(model=model, tokenizer=tokenizer, text=TEXT)
    assert all(s["data-second"] == "" for s in shown_tokens(dashboard))


def test_bad_arguments_give_clear_errors(model, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="model and tokenizer together"):
        routing_dashboard(model=model)
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        routing_dashboard(checkpoint=tmp_path / "missing.pt")
    dense = build_model(tiny_config(len(tokenizer)).dense_twin("active"))
    with pytest.raises(ValueError, match="no MoE layers"):
        routing_dashboard(model=dense, tokenizer=tokenizer)


def test_any_checkpoint_the_package_writes_loads(model, tokenizer, tmp_path):
    from moe_teach.lm.checkpoints import save_checkpoint

    path = save_checkpoint(tmp_path / "lm.pt", model, tokenizer)
    dashboard = routing_dashboard(checkpoint=path, text=TEXT)
    experts, _ = reference_routing(model, tokenizer, TEXT)
    assert [int(s["data-expert"]) for s in shown_tokens(dashboard)] == [r[0] for r in experts[0]]


def test_default_model_is_trained_once_deterministically_and_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(ra, "DEFAULT_STEPS", 3)
    monkeypatch.setattr(ra, "_MEMORY", {})
    first, _ = ra.default_model(cache_dir=tmp_path / "a", progress=False)
    path = ra.default_checkpoint_path(tmp_path / "a")
    assert path.is_file()
    assert ra.default_model(cache_dir=tmp_path / "a", progress=False)[0] is first       # memory
    ra._MEMORY.clear()
    from_disk, _ = ra.default_model(cache_dir=tmp_path / "a", progress=False)           # disk
    trained_again, _ = ra.default_model(cache_dir=tmp_path / "b", progress=False)       # trained anew
    for other in (from_disk, trained_again):
        assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), other.state_dict().values()))


def test_analysis_helpers_agree_with_direct_formulas():
    probs = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.25] * 4])
    assert torch.allclose(rv.routing_entropy(probs), torch.tensor([0.6931472, 0.0, 1.3862944]))
    assert torch.allclose(rv.routing_margin(probs), torch.tensor([0.0, 1.0, 0.0]))
    a, b = torch.tensor([0, 0, 1, 3, 3, 3]), torch.tensor([1, 1, 2, 0, 0, 1])
    counts = rv.cooccurrence(a, b, 4)
    loop = torch.zeros(4, 4, dtype=torch.long)
    for i, j in zip(a.tolist(), b.tolist()):
        loop[i, j] += 1
    assert torch.equal(counts, loop)
    assert rv.mutual_information(torch.eye(4) * 10) == pytest.approx(2.0)     # one layer decides the other
    assert rv.mutual_information(torch.ones(4, 4)) == pytest.approx(0.0, abs=1e-12)
    assert rv.top_tokens(["b", "a", "b", "c", "a"], [1, 1, 1, 0, 0], 1, 5) == [("b", 2), ("a", 1)]
    assert rv.word_consistency(["x", "x", "x", "y"], [0, 0, 1, 2], min_count=2) == {"x": pytest.approx(2 / 3)}


def test_update_benchmark_runs(dashboard):
    """A benchmark, not a timed test: the number is printed by lesson 09 and by `pytest -s`."""
    text = " ".join(" ".join(d.text for d in dashboard.corpus.validation[:5]).split()[:50])
    timing = time_update(dashboard, text, repeats=5)
    assert len(timing.times) == 5 and all(t > 0 for t in timing.times)
    print(f"dashboard update for a 50-word text: {timing.median_ms:.1f} ms (median of 5)")


# ----------------------------------------------------------------------------- moe-teach dashboard
def run_cli(capsys, *args):
    """``moe-teach dashboard ARGS`` in this process: (exit status, stderr lines)."""
    from moe_teach.course import cli

    code = cli.main(["dashboard", *args])
    return code, capsys.readouterr().err.strip().splitlines()


def test_cli_bad_checkpoint_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a model")
    for path, expected in [(tmp_path / "missing.pt", "no checkpoint file"),
                           (tmp_path / "notes.txt", "is not a moe-teach checkpoint")]:
        code, lines = run_cli(capsys, "--checkpoint", str(path), "--no-browser", "--port", "0")
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith("moe-teach dashboard: error: --checkpoint:") and expected in lines[0]


def test_cli_port_in_use_is_one_clear_line(capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, lines = run_cli(capsys, "--port", str(port), "--no-browser")
    assert code == 2 and lines == [
        f"moe-teach dashboard: error: --port {port} is in use (another dashboard or server?); "
        "pick another with --port N, or --port 0 for any free port"]


def test_app_notebook_builds_the_dashboard_from_the_checkpoint_variable(tmp_path):
    import nbformat

    from moe_teach.course.dashboard_app import CHECKPOINT_ENV, app_notebook

    nb = nbformat.read(app_notebook(tmp_path), as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert len(code) == 1 and CHECKPOINT_ENV in code[0] and "routing_dashboard(" in code[0]


def test_package_implementations_pass_the_lesson09_checks():
    from moe_teach.course.checks import run_checker

    assert run_checker("routing_entropy", rv.routing_entropy).passed
    assert run_checker("top_tokens", rv.top_tokens).passed
    assert run_checker("cooccurrence", rv.cooccurrence).passed
