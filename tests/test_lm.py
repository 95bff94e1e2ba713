import pytest
import torch

from moe_teach.counting import active_parameters, count_parameters
from moe_teach.lm.model import LanguageModel, LMConfig, generate, next_word_probabilities
from moe_teach.lm.tokenizer import WordTokenizer
from moe_teach.moe_layer import MoEConfig
from moe_teach.transformer import BlockConfig


def small_config(max_seq_len=8):
    block = BlockConfig(dim=16, num_heads=2, hidden_dim=8, moe=MoEConfig(num_experts=4, top_k=2))
    return LMConfig(vocab_size=20, max_seq_len=max_seq_len, num_layers=2, block=block)


def small_model(**changes):
    torch.manual_seed(0)
    return LanguageModel(small_config(**changes))


def test_shapes_and_tied_head():
    model = small_model()
    ids = torch.randint(0, 20, (3, 8))
    assert model(ids).shape == (3, 8, 20)
    assert model.head.weight is model.token_embedding.weight


def test_dense_twins_match_active_and_total_parameters():
    config = small_config()
    moe = LanguageModel(config)
    active = LanguageModel(config.dense_twin("active"))
    total = LanguageModel(config.dense_twin("total"))
    routers = sum(layer.router.proj.weight.numel() for layer in moe.modules() if hasattr(layer, "router"))
    # experts have biases: k (E) expert output biases vs one dense output bias
    block = config.block
    bias_gap_active = (block.moe.top_k - 1) * block.dim * config.num_layers
    bias_gap_total = (block.moe.num_experts - 1) * block.dim * config.num_layers
    assert active_parameters(moe) == count_parameters(active) + routers + bias_gap_active
    assert count_parameters(moe) == count_parameters(total) + routers + bias_gap_total


def test_config_dict_round_trip_and_bad_keys():
    config = small_config()
    assert LMConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown \\['colour'\\]"):
        LMConfig.from_dict({**config.to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="moe config keys do not match MoEConfig: unknown \\['experts'\\]"):
        data = config.to_dict()
        data["block"]["moe"]["experts"] = 4
        LMConfig.from_dict(data)
    dense = config.dense_twin("active")
    assert LMConfig.from_dict(dense.to_dict()) == dense and dense.block.moe is None


def test_ids_validation():
    model = small_model()
    with pytest.raises(ValueError, match="0..19"):
        model(torch.tensor([[0, 20]]))
    with pytest.raises(ValueError, match="0..19"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(TypeError, match="integer"):
        model(torch.tensor([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="max_seq_len=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="batch"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[1, 2]])


def test_causal_prefix_unchanged_by_later_tokens():
    model = small_model().eval()
    ids = torch.randint(4, 20, (1, 8))
    other = ids.clone()
    other[0, -1] = 4 if ids[0, -1] != 4 else 5
    assert torch.allclose(model(ids)[0, :-1], model(other)[0, :-1], atol=1e-6)


def test_generation_is_seeded_and_notes_unknown_words():
    tokenizer = WordTokenizer.from_texts(["a b c d e f g h i j k l m n o p"])
    model = small_model(max_seq_len=6)
    text, note = generate(model, tokenizer, "a zebra", max_new_words=10, temperature=1.0, seed=1)
    again, _ = generate(model, tokenizer, "a zebra", max_new_words=10, temperature=1.0, seed=1)
    assert text == again and text.startswith("a <unk>")
    assert "zebra" in note
    greedy, no_note = generate(model, tokenizer, "a b", max_new_words=3)
    assert greedy.startswith("a b") and no_note == ""
    top, _ = next_word_probabilities(model, tokenizer, "a b", top_n=3)
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]
    assert model.training  # generate restores the mode it found


def test_long_prompt_is_cut_and_the_note_says_so():
    tokenizer = WordTokenizer.from_texts(["a b c d e f g h i j k l m n o p"])
    model = small_model(max_seq_len=6)
    prompt = "a b c d e f g h i j"  # 10 words + <bos> > max_seq_len
    text, note = generate(model, tokenizer, prompt, max_new_words=2)
    assert text.startswith(prompt)
    assert "last 6 words" in note
    _, short_note = generate(model, tokenizer, "a b c", max_new_words=2)
    assert short_note == ""
    _, probs_note = next_word_probabilities(model, tokenizer, prompt)
    assert "last 6 words" in probs_note
