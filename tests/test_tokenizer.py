import pytest
import torch

from moe_teach.lm.tokenizer import SPECIAL_TOKENS, WordTokenizer, split_words

TEXTS = ["the bank reported revenue .", "def parse ( items ) : return items", "the court , the lease ."]


def test_round_trip_of_known_text():
    tokenizer = WordTokenizer.from_texts(TEXTS)
    for text in TEXTS:
        assert tokenizer.decode(tokenizer.encode(text)) == " ".join(split_words(text))


def test_special_tokens_and_ids():
    tokenizer = WordTokenizer.from_texts(TEXTS)
    assert tuple(tokenizer.vocab[:4]) == SPECIAL_TOKENS
    ids = tokenizer.encode("the bank", add_bos=True, add_eos=True)
    assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
    assert tokenizer.decode(ids) == "the bank"
    assert tokenizer.decode(torch.tensor(ids)) == "the bank"


def test_unknown_words_become_unk():
    tokenizer = WordTokenizer.from_texts(TEXTS)
    ids = tokenizer.encode("the zebra reported")
    assert ids[1] == tokenizer.unk_id
    assert tokenizer.unknown_words("The zebra reported") == ["zebra"]
    assert tokenizer.decode(ids) == "the <unk> reported"


def test_save_load(tmp_path):
    tokenizer = WordTokenizer.from_texts(TEXTS)
    tokenizer.save(tmp_path / "tok.json")
    loaded = WordTokenizer.load(tmp_path / "tok.json")
    assert loaded == tokenizer
    assert WordTokenizer.from_dict(tokenizer.to_dict()) == tokenizer


def test_bad_files_and_ids(tmp_path):
    (tmp_path / "bad.json").write_text("not json")
    with pytest.raises(ValueError, match="bad.json"):
        WordTokenizer.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="special tokens"):
        WordTokenizer(["a", "b"])
    with pytest.raises(ValueError, match="out of range"):
        WordTokenizer.from_texts(TEXTS).decode([999])
    with pytest.raises(TypeError, match="str"):
        split_words(3)
