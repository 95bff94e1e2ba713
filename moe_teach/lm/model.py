"""A small decoder-only language model built from the lesson-06 transformer block.

    ids [B, S] -> token embedding + position embedding -> N x TransformerBlock
               -> final LayerNorm -> LM head -> logits [B, S, vocab_size]

The whole model is described by one small dataclass, :class:`LMConfig` (nanoGPT style).
The whole model is one nested config, as in nanoGPT and Hugging Face: :class:`LMConfig` holds a
:class:`~moe_teach.transformer.BlockConfig`, which holds the MoE layer's
:class:`~moe_teach.moe_layer.MoEConfig`. ``LMConfig.dense_twin(match)`` gives the dense
baselines: ``"active"`` keeps the parameters a token uses (feed-forward width
``top_k * hidden_dim``), ``"total"`` keeps all parameters (width ``num_experts * hidden_dim``).

Generation helpers at the end: :func:`next_word_probabilities` and :func:`generate`.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..transformer import BlockConfig, TransformerBlock, dense_twin
from ..validation import (
    check_bool,
    check_float_tensor,
    check_index_tensor,
    check_instance,
    check_keys,
    check_module,
    check_non_negative_float,
    check_non_negative_int,
    check_parameter_budget,
    check_positive_int,
    check_seed,
    check_text,
)
from .tokenizer import WordTokenizer

MAX_LAYERS = 256            # deeper than any course model; 10**9 layers would exhaust memory
MAX_SEQ_LEN = 65_536
MAX_NEW_WORDS = 10_000      # generation runs one forward per word


@dataclass
class LMConfig:
    """Sizes of the language model; ``block`` is the config every transformer block is built from.

    ``block.moe=None`` gives a dense model (one feed-forward per block).
    """

    vocab_size: int = 256
    max_seq_len: int = 48
    num_layers: int = 2
    block: BlockConfig = field(default_factory=lambda: BlockConfig(hidden_dim=64))
    tie_weights: bool = True

    def __post_init__(self):
        check_positive_int("vocab_size", self.vocab_size)
        check_positive_int("max_seq_len", self.max_seq_len, maximum=MAX_SEQ_LEN)
        check_positive_int("num_layers", self.num_layers, maximum=MAX_LAYERS)
        if not isinstance(self.block, BlockConfig):
            raise TypeError(f"block must be a BlockConfig, got {type(self.block).__name__}")
        check_bool("tie_weights", self.tie_weights)
        dim = self.block.dim
        check_parameter_budget("LMConfig (the embeddings: vocab_size and max_seq_len)",
                               (self.vocab_size + self.max_seq_len) * dim)

    def dense_twin(self, match: str = "active") -> LMConfig:
        """The dense baseline with the same active (``"active"``) or total (``"total"``) parameters."""
        return replace(self, block=dense_twin(self.block, match))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LMConfig:
        """Inverse of :meth:`to_dict`; unknown or missing keys give a ValueError naming them."""
        check_keys("config", data, cls)
        return cls(**{**data, "block": BlockConfig.from_dict(data["block"])})


class LanguageModel(nn.Module):
    """Decoder-only transformer LM, ``ids [B, S] -> logits [B, S, vocab_size]`` with ``S <= max_seq_len``."""

    def __init__(self, config: LMConfig):
        super().__init__()
        check_instance("config", config, LMConfig)
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.block.dim)
        self.position_embedding = nn.Embedding(config.max_seq_len, config.block.dim)
        self.blocks = nn.ModuleList(TransformerBlock(config.block) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.block.dim)
        self.head = nn.Linear(config.block.dim, config.vocab_size, bias=False)
        if config.tie_weights:
            self.head.weight = self.token_embedding.weight  # one [V, dim] matrix for input and output
        self.apply(_init_weights)

    def forward(self, ids: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``ids`` ``[B, S]`` int64 -> logits ``[B, S, V]``.

        ``token_mask`` ``[B, S]`` (True = real token) keeps padding out of the routers'
        auxiliary losses; causal attention already keeps trailing padding from affecting
        real tokens.
        """
        self.check_ids(ids)
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.token_embedding(ids) + self.position_embedding(positions)  # [B, S, dim]
        for block in self.blocks:
            x = block(x, token_mask=token_mask)
        return self.head(self.norm(x))

    def check_ids(self, ids) -> None:
        """Raise a clear TypeError/ValueError for ids the model cannot embed."""
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"ids must be a torch.Tensor of token ids, got {type(ids).__name__}")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(
                f"ids must be an integer tensor (torch.long), got dtype {ids.dtype}; "
                "token ids come from tokenizer.encode"
            )
        if ids.dim() != 2:
            raise ValueError(
                f"ids must have shape [batch, seq_len], got {tuple(ids.shape)}; "
                "add a batch dimension with ids.unsqueeze(0)"
            )
        if ids.shape[1] > self.config.max_seq_len:
            raise ValueError(
                f"sequence length {ids.shape[1]} is longer than max_seq_len="
                f"{self.config.max_seq_len}; keep only the last {self.config.max_seq_len} tokens"
            )
        if ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < self.config.vocab_size:
            raise ValueError(
                f"token ids must lie in 0..{self.config.vocab_size - 1} (vocab_size), "
                f"got values from {int(ids.min())} to {int(ids.max())}"
            )


def eval_mode(model: nn.Module):
    """``with eval_mode(model):`` runs the block in eval mode (no router noise), then restores the mode."""
    check_module("model", model)
    return _restoring_mode(model)


@contextlib.contextmanager
def _restoring_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _init_weights(module: nn.Module) -> None:
    """GPT-2 style: normal(0, 0.02) for linear and embedding weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def encode_prompt(
    tokenizer: WordTokenizer, prompt: str, max_seq_len: int | None = None
) -> tuple[list[int], str]:
    """``<bos>`` + the prompt's ids, and a note ("" if nothing to say).

    The note names any word that became ``<unk>`` and, when ``<bos>`` + prompt is longer
    than ``max_seq_len``, says that the model only sees the last ``max_seq_len`` tokens.
    """
    check_instance("tokenizer", tokenizer, WordTokenizer)
    check_text("prompt", prompt)
    if max_seq_len is not None:
        check_positive_int("max_seq_len", max_seq_len)
    ids = tokenizer.encode(prompt, add_bos=True)
    notes = []
    unknown = tokenizer.unknown_words(prompt)
    if unknown:
        notes.append(
            f"note: {len(unknown)} word(s) not in the vocabulary were replaced by <unk>: "
            f"{', '.join(repr(w) for w in unknown)}"
        )
    if max_seq_len is not None and len(ids) > max_seq_len:
        notes.append(
            f"note: the prompt is {len(ids) - 1} words but the model reads at most {max_seq_len} tokens; "
            f"it used only the last {max_seq_len} words"
        )
    return ids, "\n".join(notes)


@torch.no_grad()
def next_word_probabilities(
    model: LanguageModel, tokenizer: WordTokenizer, prompt: str, top_n: int = 5
) -> tuple[list[tuple[str, float]], str]:
    """The ``top_n`` most likely next words after ``prompt`` with their probabilities, and the unk note."""
    check_instance("model", model, LanguageModel)
    check_positive_int("top_n", top_n)
    ids, note = encode_prompt(tokenizer, prompt, model.config.max_seq_len)
    probs = torch.softmax(_next_token_logits(model, ids), dim=-1)
    values, indices = probs.topk(min(top_n, probs.numel()))
    return [(tokenizer.vocab[i], float(p)) for p, i in zip(values.tolist(), indices.tolist())], note


def _next_token_logits(model: LanguageModel, ids: list[int]) -> torch.Tensor:
    """``[V]`` float32 next-token logits; the context is cut to the last ``max_seq_len`` ids."""
    context = torch.tensor([ids[-model.config.max_seq_len :]], dtype=torch.long)
    return model(context)[0, -1].float()


@torch.no_grad()
def generate(
    model: LanguageModel,
    tokenizer: WordTokenizer,
    prompt: str,
    max_new_words: int = 20,
    temperature: float = 0.0,
    seed: int = 0,
) -> tuple[str, str]:
    """Continue ``prompt``: greedy when ``temperature == 0``, else sampling at that temperature.

    Stops at ``<eos>``. Sampling uses its own seeded generator, so the same seed gives the
    same text. Returns ``(text, note)`` where ``note`` names words that became ``<unk>`` and says
    when a long prompt was cut to its last ``max_seq_len`` tokens (the text is the whole prompt
    plus the new words).
    The model is put in eval mode (no router noise) and restored afterwards.
    """
    check_instance("model", model, LanguageModel)
    check_positive_int("max_new_words", max_new_words, maximum=MAX_NEW_WORDS)
    temperature = check_non_negative_float("temperature", temperature)
    check_seed("seed", seed)
    ids, note = encode_prompt(tokenizer, prompt, model.config.max_seq_len)
    generator = torch.Generator().manual_seed(seed)
    with eval_mode(model):
        for _ in range(max_new_words):
            logits = _next_token_logits(model, ids)
            if temperature == 0:
                next_id = int(logits.argmax())
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                next_id = int(torch.multinomial(probs, 1, generator=generator))
            if next_id == tokenizer.eos_id:
                break
            ids.append(next_id)
    return tokenizer.decode(ids), note


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Mean next-token cross-entropy over non-padding targets; ``logits [B, S, V]``, ``targets [B, S]``."""
    check_float_tensor("logits", logits, min_dims=3)
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape [batch, seq_len, vocab], got {tuple(logits.shape)}")
    check_index_tensor("targets", targets, num_rows=logits.shape[0], dims=2)
    if targets.shape != logits.shape[:2]:
        raise ValueError(f"targets must have shape {tuple(logits.shape[:2])} (logits without the vocab "
                         f"dimension), got {tuple(targets.shape)}")
    check_non_negative_int("pad_id", pad_id)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=pad_id
    )
