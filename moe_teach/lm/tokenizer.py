"""A word-level tokenizer: one id per distinct word of the training text.

Why word level for this course: the corpus is generated from templates, so its vocabulary
is small (a few hundred words) and closed; word tokens give sequences about five times
shorter than characters (fast on a CPU), and each token is a whole word, so a routing
heatmap per token is readable. The price: a word never seen in training becomes ``<unk>``.
(Real LLMs use sub-word tokenizers such as BPE to get both a bounded vocabulary and no
unknown words.)

Special ids: ``<pad>`` = 0, ``<unk>`` = 1, ``<bos>`` = 2, ``<eos>`` = 3.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import torch

from ..validation import check_bool, check_positive_int

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)

_WORD = re.compile(r"[\w']+|[^\w\s]+")


def split_words(text: str) -> list[str]:
    """Lower-case ``text`` and split it into words and punctuation (``"a, b." -> ["a", ",", "b", "."]``)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Maps words to ids and back. Build one with :meth:`from_texts`.

    Args:
        vocab: every token, position = id; must start with the four special tokens.
    """

    def __init__(self, vocab: list[str]):
        if isinstance(vocab, str) or not isinstance(vocab, (list, tuple)):
            raise TypeError(f"vocab must be a list of str tokens, got {type(vocab).__name__}")
        vocab = list(vocab)
        if not all(isinstance(token, str) for token in vocab):
            raise TypeError("vocab must be a list of str tokens, got a non-str entry")
        if tuple(vocab[:4]) != SPECIAL_TOKENS:
            raise ValueError(
                f"vocab must start with the special tokens {list(SPECIAL_TOKENS)}, got {vocab[:4]}"
            )
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab must not contain duplicate tokens")
        self.vocab = vocab
        self.ids = {word: i for i, word in enumerate(vocab)}

    @classmethod
    def from_texts(cls, texts, min_count: int = 1) -> WordTokenizer:
        """Vocabulary of every word seen at least ``min_count`` times, most frequent first.

        ``texts`` is a list (or any iterable) of str, not one str: ``from_texts(["a b", "c"])``.
        """
        if isinstance(texts, str) or not hasattr(texts, "__iter__"):
            raise TypeError(f"texts must be a list (or iterable) of str, not a single {type(texts).__name__}; "
                            "wrap one text in a list: from_texts([text])")
        check_positive_int("min_count", min_count)
        texts = list(texts)
        if not all(isinstance(text, str) for text in texts):
            raise TypeError("texts must hold only str, got a non-str entry")
        counts = Counter(word for text in texts for word in split_words(text))
        words = sorted(
            (w for w, c in counts.items() if c >= min_count and w not in SPECIAL_TOKENS),
            key=lambda w: (-counts[w], w),
        )
        return cls(list(SPECIAL_TOKENS) + words)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    @property
    def bos_id(self) -> int:
        return 2

    @property
    def eos_id(self) -> int:
        return 3

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Word ids of ``text``; unknown words become ``<unk>``."""
        check_bool("add_bos", add_bos)
        check_bool("add_eos", add_eos)
        ids = [self.ids.get(word, self.unk_id) for word in split_words(text)]
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` that are not in the vocabulary (they would encode as ``<unk>``)."""
        return [word for word in split_words(text) if word not in self.ids]

    def decode(self, ids, skip_special: bool = True) -> str:
        """Words of ``ids`` (ints or a 1-D tensor) joined by spaces; ``<pad>``/``<bos>``/``<eos>`` skipped."""
        check_bool("skip_special", skip_special)
        words = []
        for i in _token_ids(ids):
            if not 0 <= i < len(self.vocab):
                raise ValueError(f"ids: token id {i} is out of range 0..{len(self.vocab) - 1}")
            if skip_special and i in (self.pad_id, self.bos_id, self.eos_id):
                continue
            words.append(self.vocab[i])
        return " ".join(words)

    def to_dict(self) -> dict:
        """Plain-Python form (stored in checkpoints, loadable with ``weights_only=True``)."""
        return {"kind": "word", "vocab": list(self.vocab)}

    @classmethod
    def from_dict(cls, data: dict) -> WordTokenizer:
        if (
            not isinstance(data, dict)
            or data.get("kind") != "word"
            or not isinstance(data.get("vocab"), list)
        ):
            raise ValueError("tokenizer data must be a dict {'kind': 'word', 'vocab': [...]}")
        return cls(data["vocab"])

    def save(self, path) -> None:
        """Write the vocabulary as JSON (checkpoints embed :meth:`to_dict` instead)."""
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path) -> WordTokenizer:
        """Read a tokenizer written by :meth:`save`; a file of another kind gives a clear ValueError."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read a tokenizer from {path}: {error}") from None
        return cls.from_dict(data)

    def __eq__(self, other) -> bool:
        return isinstance(other, WordTokenizer) and self.vocab == other.vocab

    def __repr__(self) -> str:
        return f"WordTokenizer({len(self.vocab)} tokens)"


def _token_ids(ids) -> list[int]:
    """``ids`` as a list of ints: a list/tuple of ints or a 1-D integer tensor (not a str)."""
    if isinstance(ids, torch.Tensor):
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool or ids.dim() > 1:
            raise TypeError(f"ids must be a 1-D integer tensor or a list of ints, got a {ids.dtype} tensor "
                            f"of shape {tuple(ids.shape)}")
        return ids.tolist() if ids.dim() == 1 else [int(ids)]
    if not isinstance(ids, (list, tuple)):
        raise TypeError(f"ids must be a list of int token ids or a 1-D integer tensor, got {type(ids).__name__}")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise TypeError("ids must hold only int token ids, got "
                        + ", ".join(sorted({type(i).__name__ for i in ids if not isinstance(i, int) or
                                            isinstance(i, bool)})))
    return list(ids)
