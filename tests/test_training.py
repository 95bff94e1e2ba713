import argparse

import pytest
import torch

from moe_teach.course.cli import main
from moe_teach.lm.checkpoints import load_checkpoint, save_checkpoint
from moe_teach.lm.data import DOMAINS
from moe_teach.lm.evaluation import domain_expert_counts, domain_expert_shares, evaluate
from moe_teach.lm.model import LMConfig
from moe_teach.lm.training import (
    TrainConfig,
    build_model,
    learning_rate,
    model_config,
    prepare_data,
    train_model,
)
from moe_teach.moe_layer import MoEConfig
from moe_teach.transformer import BlockConfig


@pytest.fixture(scope="module")
def prepared():
    return prepare_data(documents_per_domain=12, seed=0, max_seq_len=48)


def tiny_config(prepared, num_experts=4, top_k=2):
    block = BlockConfig(dim=32, num_heads=2, hidden_dim=32, moe=MoEConfig(num_experts=num_experts, top_k=top_k))
    return LMConfig(vocab_size=len(prepared.tokenizer), max_seq_len=48, num_layers=2, block=block)


def test_loss_decreases(prepared):
    model = build_model(tiny_config(prepared), seed=0)
    history = train_model(
        model, prepared.train, TrainConfig(steps=30, batch_size=8, warmup_steps=3, lr=1e-2), progress=False
    )
    first, last = sum(history.loss[:5]) / 5, sum(history.loss[-5:]) / 5
    assert last < first - 0.5, f"loss went from {first:.2f} to {last:.2f} (nats)"
    assert len(history.expert_load) == 30 and history.expert_load[0].shape == (2, 4)
    assert all(torch.isfinite(torch.tensor(history.switch)))


def test_learning_rate_schedule():
    config = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    rates = [learning_rate(s, config) for s in range(100)]
    assert rates[9] == pytest.approx(1.0) and rates[0] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:]))
    assert rates[-1] >= 0.1 and learning_rate(100, config) == pytest.approx(0.1)


def test_evaluate_reports_every_domain(prepared):
    model = build_model(tiny_config(prepared), seed=0)
    perplexity = evaluate(model, prepared.validation)
    assert set(perplexity) == set(DOMAINS) | {"all"}
    # an untrained model is close to uniform over the vocabulary
    assert 0.5 * len(prepared.tokenizer) < perplexity["all"] < 2 * len(prepared.tokenizer)


def test_domain_routing_table_sums(prepared):
    model = build_model(tiny_config(prepared, top_k=2), seed=0)
    counts = domain_expert_counts(model, prepared.validation)
    shares = domain_expert_shares(model, prepared.validation)
    assert counts.shape == shares.shape == (2, len(DOMAINS), 4)
    real = prepared.validation.inputs != prepared.validation.pad_id
    for d in range(len(DOMAINS)):
        tokens = int(real[prepared.validation.domains == d].sum())
        assert torch.all(counts[:, d].sum(dim=-1) == 2 * tokens)
    assert torch.allclose(shares.sum(dim=-1), torch.ones(2, len(DOMAINS)))
    with pytest.raises(ValueError, match="no MoE layers"):
        domain_expert_counts(build_model(tiny_config(prepared).dense_twin("active")), prepared.validation)


def test_checkpoint_round_trip_gives_identical_logits(prepared, tmp_path):
    model = build_model(tiny_config(prepared), seed=1).eval()
    path = save_checkpoint(tmp_path / "lm.pt", model, prepared.tokenizer)
    loaded, tokenizer = load_checkpoint(path)
    ids = prepared.validation.inputs[:4]
    assert tokenizer == prepared.tokenizer
    assert loaded.config == model.config
    assert torch.equal(loaded(ids), model(ids))
    again, _ = load_checkpoint(path, build_model(tiny_config(prepared), seed=7))
    assert torch.equal(again(ids), model(ids))


def test_bad_checkpoints_give_clear_errors(prepared, tmp_path):
    model = build_model(tiny_config(prepared), seed=1)
    path = save_checkpoint(tmp_path / "lm.pt", model, prepared.tokenizer)
    with pytest.raises(ValueError, match="another configuration.*num_experts"):
        load_checkpoint(path, build_model(tiny_config(prepared, num_experts=8)))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="corrupt.pt is not a moe-teach checkpoint"):
        load_checkpoint(corrupt)
    damaged = tmp_path / "damaged.pt"  # a zip archive whose payload is cut short
    damaged.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2] + path.read_bytes()[-200:])
    with pytest.raises(ValueError, match="damaged.pt is not a moe-teach checkpoint") as info:
        load_checkpoint(damaged)
    assert "weights_only" not in str(info.value)
    text = tmp_path / "notes.pt"
    text.write_text("hi\n")
    with pytest.raises(ValueError) as info:
        load_checkpoint(text)
    assert str(info.value) == (
        f"{text} is not a moe-teach checkpoint (not a file written by torch.save / save_checkpoint)"
    )
    pickled = tmp_path / "pickled.pt"  # holds a Python object that safe loading refuses
    torch.save({"obj": argparse.Namespace(a=1)}, pickled)
    with pytest.raises(ValueError, match="pickled.pt is not a moe-teach checkpoint") as info:
        load_checkpoint(pickled)
    assert "weights_only" not in str(info.value)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not a moe-teach"):
        load_checkpoint(other)
    data = torch.load(path, weights_only=True)
    data["state_dict"]["extra.weight"] = torch.zeros(1)
    torch.save(data, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match="extra keys \\['extra.weight'\\]"):
        load_checkpoint(tmp_path / "extra.pt")
    del data["state_dict"]["extra.weight"], data["state_dict"]["norm.bias"]
    torch.save(data, tmp_path / "missing_key.pt")
    with pytest.raises(ValueError, match="missing keys \\['norm.bias'\\]"):
        load_checkpoint(tmp_path / "missing_key.pt")


def test_model_kinds(prepared):
    base = tiny_config(prepared)
    assert model_config("moe", base) is base
    assert model_config("dense-total", base).block.hidden_dim == 4 * base.block.hidden_dim
    with pytest.raises(ValueError, match="kind"):
        model_config("sparse", base)


def test_cli_train_writes_a_loadable_checkpoint(tmp_path, capsys):
    path = tmp_path / "run" / "lm.pt"
    code = main(
        [
            "train",
            "--steps",
            "3",
            "--documents-per-domain",
            "10",
            "--batch-size",
            "4",
            "--out",
            str(path),
            "--no-progress",
            "--model",
            "dense-active",
        ]
    )
    assert code == 0 and "validation perplexity" in capsys.readouterr().out
    model, tokenizer = load_checkpoint(path)
    assert model.config.block.moe is None and len(tokenizer) == model.config.vocab_size


CLI_BASE = ["train", "--steps", "2", "--documents-per-domain", "10", "--batch-size", "4", "--no-progress"]


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--steps", "0"], "--steps"),
        (["--lr", "0"], "--lr"),
        (["--lr=-1e-3"], "--lr"),
        (["--experts", "0"], "--experts"),
        (["--top-k", "5"], "--top-k"),
        (["--top-k", "0"], "--top-k"),
        (["--threads", "0"], "--threads"),
        (["--layers", "0"], "--layers"),
        (["--batch-size", "0"], "--batch-size"),
        (["--documents-per-domain", "3"], "--documents-per-domain"),
    ],
)
def test_cli_rejects_bad_arguments_before_training(tmp_path, capsys, extra, named):
    out = tmp_path / "lm.pt"
    code = main([*CLI_BASE, "--out", str(out), *extra])
    error = capsys.readouterr().err
    assert code == 2 and named in error and not out.exists()


def test_cli_checks_out_before_training(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where a folder should be")
    assert main([*CLI_BASE, "--out", str(blocker / "lm.pt")]) == 2
    assert "cannot create the folder" in capsys.readouterr().err
    assert main([*CLI_BASE, "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    out = tmp_path / "new" / "deeper" / "lm.pt"
    assert main([*CLI_BASE, "--out", str(out)]) == 0 and out.is_file()


# ----------------------------------------------------------------------------- lesson 07's knowledge runs
def test_a_continued_schedule_equals_an_uninterrupted_one(prepared):
    from moe_teach.lm.training import make_optimizer

    config = TrainConfig(steps=12, batch_size=4, warmup_steps=3, lr=1e-2)
    whole = build_model(tiny_config(prepared), seed=1)
    train_model(whole, prepared.train, config, progress=False)
    pieces = build_model(tiny_config(prepared), seed=1)
    optimizer = make_optimizer(pieces, config)
    first = train_model(pieces, prepared.train, config, progress=False, stop_step=5, optimizer=optimizer)
    second = train_model(pieces, prepared.train, config, progress=False, start_step=5, optimizer=optimizer)
    assert len(first.loss) == 5 and len(second.loss) == 7
    assert second.lr == [learning_rate(s, config) for s in range(5, 12)]
    for (name, a), b in zip(whole.state_dict().items(), pieces.state_dict().values()):
        assert torch.equal(a, b), name
    # a fresh optimizer at step 5 is a different run: the test above can tell them apart
    fresh = build_model(tiny_config(prepared), seed=1)
    train_model(fresh, prepared.train, config, progress=False, stop_step=5)
    train_model(fresh, prepared.train, config, progress=False, start_step=5)
    assert not all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), fresh.state_dict().values()))


def test_the_fused_optimizer_takes_the_steps_of_plain_adamw(prepared):
    from moe_teach.lm.training import make_optimizer

    config = TrainConfig(steps=3, batch_size=4, warmup_steps=1, lr=1e-2)
    fused_model, plain_model = build_model(tiny_config(prepared), seed=2), build_model(tiny_config(prepared), seed=2)
    fused = make_optimizer(fused_model, config)
    assert fused.defaults["fused"] is True
    plain = torch.optim.AdamW(plain_model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    train_model(fused_model, prepared.train, config, progress=False, optimizer=fused)
    train_model(plain_model, prepared.train, config, progress=False, optimizer=plain)
    for (name, a), b in zip(fused_model.state_dict().items(), plain_model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_bad_step_ranges(prepared):
    model = build_model(tiny_config(prepared), seed=0)
    config = TrainConfig(steps=4, batch_size=2, warmup_steps=1)
    with pytest.raises(ValueError, match="start_step"):
        train_model(model, prepared.train, config, progress=False, start_step=4)
    with pytest.raises(ValueError, match="stop_step"):
        train_model(model, prepared.train, config, progress=False, stop_step=5)
    with pytest.raises(TypeError, match="config"):
        train_model(model, prepared.train, {"steps": 3}, progress=False)


def test_answer_token_loss_against_a_hand_computed_example():
    import math

    from moe_teach.lm.evaluation import answer_token_loss

    # vocabulary of 3; logits log(p) so the probabilities are readable
    probs = torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5]]])  # [1, 3, 3]
    targets = torch.tensor([[0, 2, 2]])
    answers = torch.tensor([[False, True, True]])
    expected = -(math.log(0.3) + math.log(0.5)) / 2           # positions 1 and 2 only
    assert answer_token_loss(probs.log(), targets, answers).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="answer"):
        answer_token_loss(probs.log(), targets, torch.zeros(1, 3, dtype=torch.bool))


def test_evaluate_answers_matches_per_document_sums():
    from moe_teach.lm.compare import knowledge_config, prepare_knowledge
    from moe_teach.lm.evaluation import answer_token_loss, evaluate_answers
    from moe_teach.lm.training import LMData

    knowledge = prepare_knowledge(seed=0)
    data = knowledge.validation
    small = LMData(data.inputs[:10], data.targets[:10], data.domains[:10], data.pad_id, data.answer_mask[:10])
    model = build_model(knowledge_config(len(knowledge.tokenizer)), seed=0).eval()
    scores = evaluate_answers(model, small, batch_size=3)
    with torch.no_grad():
        logits = model(small.inputs)
    assert scores["answer_loss"]["all"] == pytest.approx(
        answer_token_loss(logits, small.targets, small.answer_mask).item(), rel=1e-5)
    real = small.targets != small.pad_id
    nll = torch.nn.functional.cross_entropy(logits[real], small.targets[real])
    assert scores["perplexity"]["all"] == pytest.approx(torch.exp(nll).item(), rel=1e-5)
    # each document states 4 facts, so the answer mask marks 4 targets per row
    assert (small.answer_mask.sum(dim=1) == 4).all()


def test_cli_compare_last_line_parses(capsys):
    code = main(["train", "--compare", "--steps", "4", "--upcycle-at", "2", "--seed", "3", "--no-progress"])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    pairs = dict(item.split("=") for item in last.split(" "))
    assert list(pairs) == ["upcycled", "dense_continued", "scratch_moe", "dense_active", "dense_total"]
    assert all(0 < float(v) < 10 for v in pairs.values())


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--upcycle-at", "4"], "--upcycle-at"),
        (["--upcycle-at", "0"], "--upcycle-at"),
        (["--steps", "1"], "--steps"),
        (["--model", "dense-total"], "--model"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_cli_compare_rejects_bad_flags(capsys, extra, named):
    assert main(["train", "--compare", "--steps", "4", "--no-progress", *extra]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and named in error


def test_upcycle_at_needs_compare(tmp_path, capsys):
    assert main([*CLI_BASE, "--out", str(tmp_path / "lm.pt"), "--upcycle-at", "3"]) == 2
    assert "--upcycle-at" in capsys.readouterr().err
