"""Issue 16's findings in the language-model code, each with its own test.

Bad values get a ValueError/TypeError naming the argument (the CLI names the flag, in one
line, exit status 2, writing nothing); sizes are bounded; checkpoints are verified.
"""

from __future__ import annotations

import math
import random
import zipfile

import pytest
import torch

import moe_teach as mt
from moe_teach.course.cli import main
from moe_teach.lm import checkpoints, training
from moe_teach.lm.checkpoints import load_checkpoint, save_checkpoint
from moe_teach.lm.data import make_corpus, make_document
from moe_teach.lm.evaluation import domain_expert_counts, evaluate
from moe_teach.lm.model import LMConfig, generate, lm_loss
from moe_teach.lm.tokenizer import WordTokenizer
from moe_teach.lm.training import LMData, TrainConfig, batch_schedule, build_model, prepare_data, train_model
from moe_teach.moe_layer import MoEConfig
from moe_teach.transformer import BlockConfig

CLI_BASE = ["train", "--steps", "2", "--documents-per-domain", "10", "--batch-size", "4", "--no-progress"]


@pytest.fixture(scope="module")
def prepared():
    return prepare_data(documents_per_domain=10, seed=0, max_seq_len=48)


@pytest.fixture(scope="module")
def model(prepared):
    block = BlockConfig(dim=16, num_heads=2, hidden_dim=16, moe=MoEConfig(num_experts=4, top_k=2))
    return build_model(LMConfig(vocab_size=len(prepared.tokenizer), num_layers=1, block=block))


@pytest.mark.parametrize("name", ["lr", "weight_decay", "switch_coef", "z_coef"])
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_train_config_rejects_non_finite_numbers(name, bad):
    with pytest.raises(ValueError, match=f"{name} must be .*finite"):
        TrainConfig(**{name: bad})


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_eps_rejects_non_finite_numbers(bad):
    with pytest.raises(ValueError, match="eps"):
        mt.cv_squared(torch.rand(4), eps=bad)


@pytest.mark.parametrize("extra, named", [
    (["--lr", "inf"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--documents-per-domain", str(10**9)], "--documents-per-domain"),
    (["--batch-size", "100000"], "--batch-size"),
    (["--seed", str(2**70)], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--layers", str(10**9)], "--layers"),
])
def test_cli_refuses_in_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, extra, named):
    monkeypatch.setattr(training, "prepare_data", _no_training)
    out = tmp_path / "lm.pt"
    assert main([*CLI_BASE, "--out", str(out), *extra]) == 2
    error = capsys.readouterr().err.strip()
    assert named in error and len(error.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def _no_training(*args, **kwargs):
    raise AssertionError("training started although an argument was bad")


@pytest.mark.parametrize("out", ["/dev/full", "/proc/self/lm.pt", "/proc/lm.pt"])
def test_cli_out_that_cannot_be_written_fails_before_training(capsys, monkeypatch, out):
    monkeypatch.setattr(training, "prepare_data", _no_training)
    assert main([*CLI_BASE, "--out", out]) == 2
    error = capsys.readouterr().err.strip()
    assert "--out" in error and len(error.splitlines()) == 1


def test_a_write_failure_after_training_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    def disk_full(obj, file, *args, **kwargs):
        file.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(training.torch, "save", disk_full)
    out = tmp_path / "lm.pt"
    assert main([*CLI_BASE, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "--out" in error and "No space left on device" in error and len(error.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []   # neither the checkpoint nor a half-written temporary file


def test_lm_loss_checks_its_arguments():
    logits, targets = torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3))
    assert torch.allclose(lm_loss(logits, targets), torch.nn.functional.cross_entropy(
        logits.reshape(-1, 5), targets.reshape(-1), ignore_index=0))
    with pytest.raises(TypeError, match="logits"):
        lm_loss(logits.tolist(), targets)
    with pytest.raises(TypeError, match="targets"):
        lm_loss(logits, targets.tolist())
    with pytest.raises(ValueError, match="targets"):
        lm_loss(logits, targets[:, :2])
    with pytest.raises(ValueError, match="logits"):
        lm_loss(torch.randn(6, 5), targets)
    with pytest.raises(TypeError, match="pad_id"):
        lm_loss(logits, targets, pad_id=0.5)


def test_batch_schedule_checks_its_arguments():
    assert batch_schedule(5, 3, 2, seed=0).shape == (3, 2)
    with pytest.raises(ValueError, match="num_rows"):
        batch_schedule(0, 3, 2, seed=0)
    with pytest.raises(ValueError, match="steps \\* batch_size"):
        batch_schedule(5, 10**7, 4096, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        batch_schedule(5, 3, 100_000, seed=0)


@pytest.mark.parametrize("bad", [0, -1, 2.5, "3", None])
def test_evaluate_and_routing_counts_check_batch_size(prepared, model, bad):
    for fn in (evaluate, domain_expert_counts):
        with pytest.raises((TypeError, ValueError), match="batch_size"):
            fn(model, prepared.validation, batch_size=bad)


@pytest.mark.parametrize("fn", [evaluate, domain_expert_counts])
def test_evaluation_restores_training_mode_when_it_fails(prepared, model, monkeypatch, fn):
    model.train()

    def broken(*args, **kwargs):
        raise RuntimeError("forward failed")

    monkeypatch.setattr(model, "forward", broken)
    with pytest.raises(RuntimeError, match="forward failed"):
        fn(model, prepared.validation)
    assert model.training


def test_make_document_checks_its_arguments():
    rng = random.Random(0)
    assert make_document("legal", rng).domain == "legal"
    with pytest.raises(ValueError, match="domain"):
        make_document("poetry", rng)
    with pytest.raises(TypeError, match="rng"):
        make_document("legal", 0)
    with pytest.raises(ValueError, match="max_sentences"):
        make_document("legal", rng, min_sentences=3, max_sentences=2)
    with pytest.raises(ValueError, match="max_sentences"):
        make_document("legal", rng, max_sentences=10**9)


def test_train_model_checks_config_and_data(prepared, model):
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        train_model(model, prepared.train, config={"steps": 2}, progress=False)
    with pytest.raises(TypeError, match="data"):
        train_model(model, prepared.train.inputs, progress=False)
    with pytest.raises(TypeError, match="model"):
        train_model("model", prepared.train, progress=False)
    with pytest.raises(TypeError, match="progress"):
        train_model(model, prepared.train, TrainConfig(steps=1), progress="yes")


@pytest.mark.parametrize("bad", ["yes", 0.5, None, 1])
def test_booleans_are_exactly_true_or_false(bad):
    with pytest.raises(TypeError, match="tie_weights"):
        LMConfig(tie_weights=bad)


@pytest.mark.parametrize("bad", ["x", None, 2.5, 2**70, -1])
def test_seeds_are_ints_in_torch_range(prepared, model, bad):
    for call in (lambda: TrainConfig(seed=bad), lambda: make_corpus(10, seed=bad),
                 lambda: batch_schedule(5, 2, 2, seed=bad),
                 lambda: generate(model, prepared.tokenizer, "the", max_new_words=2, seed=bad),
                 lambda: build_model(model.config, seed=bad)):
        with pytest.raises((TypeError, ValueError), match="seed"):
            call()


def test_huge_sizes_are_refused_at_once(prepared, model):
    with pytest.raises(ValueError, match="num_layers must be at most"):
        LMConfig(num_layers=10**9)
    with pytest.raises(ValueError, match="max_new_words must be at most"):
        generate(model, prepared.tokenizer, "the", max_new_words=10**9)
    with pytest.raises(ValueError, match="documents_per_domain must be at most"):
        make_corpus(10**9)
    with pytest.raises(ValueError, match="batch_size must be at most"):
        TrainConfig(batch_size=100_000)


def test_tokenizer_from_texts_wants_a_list_of_texts():
    assert WordTokenizer.from_texts(["abc def"]).vocab[4:] == ["abc", "def"]
    with pytest.raises(TypeError, match="texts must be a list"):
        WordTokenizer.from_texts("abc def")
    with pytest.raises(TypeError, match="texts"):
        WordTokenizer.from_texts(["abc", 3])


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError), (math.nan, TypeError), (1.5, TypeError)])
def test_tokenizer_min_count_is_a_positive_int(bad, error):
    with pytest.raises(error, match="min_count"):
        WordTokenizer.from_texts(["a b"], min_count=bad)


@pytest.mark.parametrize("bad", ["45", [4.0, 5.0], torch.tensor([4.0, 5.0]), 45, [True]])
def test_tokenizer_decode_wants_int_ids(bad):
    tokenizer = WordTokenizer.from_texts(["a b c d e f"])
    assert tokenizer.decode([4, 5]) == tokenizer.decode(torch.tensor([4, 5])) == "a b"
    with pytest.raises(TypeError, match="ids"):
        tokenizer.decode(bad)


def test_lists_where_tensors_are_expected_get_a_type_error(prepared):
    data = prepared.train
    with pytest.raises(TypeError, match="inputs"):
        LMData(data.inputs.tolist(), data.targets, data.domains)
    with pytest.raises(TypeError, match="answer_mask"):
        LMData(data.inputs, data.targets, data.domains, answer_mask=(data.inputs > 5).tolist())


def _flip_bytes_inside_a_tensor_record(path):
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)   # the largest record: a weight matrix
        assert info.compress_type == zipfile.ZIP_STORED
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    middle = start + info.file_size // 2
    raw[middle:middle + 4] = bytes(b ^ 0xFF for b in raw[middle:middle + 4])
    path.write_bytes(bytes(raw))
    return info.filename


def test_flipped_bytes_inside_a_tensor_are_refused(prepared, model, tmp_path):
    path = save_checkpoint(tmp_path / "lm.pt", model, prepared.tokenizer)
    load_checkpoint(path)                                    # intact: loads
    record = _flip_bytes_inside_a_tensor_record(path)
    with pytest.raises(ValueError, match=f"lm.pt is not a moe-teach checkpoint.*{record}.*CRC"):
        load_checkpoint(path)


def test_a_state_dict_holding_a_non_tensor_is_refused(prepared, model, tmp_path):
    state = model.state_dict()
    key = next(iter(state))
    state[key] = "not a tensor"
    torch.save({"format": checkpoints.CHECKPOINT_FORMAT, "config": model.config.to_dict(),
                "max_seq_len": model.config.max_seq_len, "tokenizer": prepared.tokenizer.to_dict(),
                "state_dict": state}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match=f"entries \\['{key}'\\] are not tensors"):
        load_checkpoint(tmp_path / "odd.pt")


def test_prepared_corpus_has_its_real_type():
    assert training.Prepared.__annotations__["corpus"] in ("Corpus", training.Corpus)
