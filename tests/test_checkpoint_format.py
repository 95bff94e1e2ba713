"""Checkpoints record their format version; an older format gives an error naming the version."""

import pytest
import torch

from moe_teach.lm.checkpoints import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from moe_teach.lm.model import LanguageModel, LMConfig
from moe_teach.lm.tokenizer import WordTokenizer
from moe_teach.moe_layer import MoEConfig
from moe_teach.transformer import BlockConfig


def tiny_model(vocab_size: int) -> LanguageModel:
    torch.manual_seed(0)
    block = BlockConfig(dim=8, num_heads=2, hidden_dim=8, moe=MoEConfig(num_experts=2, top_k=1))
    return LanguageModel(LMConfig(vocab_size=vocab_size, max_seq_len=4, num_layers=1, block=block))


def test_checkpoint_stores_the_nested_config_and_its_format(tmp_path):
    tokenizer = WordTokenizer.from_texts(["a b c"])
    model = tiny_model(len(tokenizer))
    path = save_checkpoint(tmp_path / "m.pt", model, tokenizer)
    data = torch.load(path, weights_only=True)
    assert data["format"] == CHECKPOINT_FORMAT == "moe-teach-lm/2"
    assert data["config"]["block"]["moe"]["num_experts"] == 2
    loaded, _ = load_checkpoint(path)
    assert loaded.config == model.config


def test_old_format_checkpoint_names_its_version(tmp_path):
    flat_config = dict(vocab_size=5, max_seq_len=4, num_layers=1, dim=8, num_heads=2, hidden_dim=8,
                       num_experts=2, top_k=1, activation="gelu", router="softmax", capacity_factor=None,
                       dispatch="grouped", moe=True, tie_weights=True)
    path = tmp_path / "old.pt"
    torch.save({"format": "moe-teach-lm/1", "config": flat_config, "max_seq_len": 4,
                "tokenizer": {"vocab": []}, "state_dict": {}}, path)
    with pytest.raises(ValueError, match=r"format version 1, this moe-teach reads version 2; train it again"):
        load_checkpoint(path)


def test_a_config_mismatch_names_the_nested_field(tmp_path):
    tokenizer = WordTokenizer.from_texts(["a b c"])
    path = save_checkpoint(tmp_path / "m.pt", tiny_model(len(tokenizer)), tokenizer)
    other = tiny_model(len(tokenizer))
    other.config.block.moe.top_k = 2
    with pytest.raises(ValueError, match=r"block\.moe\.top_k: model 2 vs checkpoint 1"):
        load_checkpoint(path, other)
