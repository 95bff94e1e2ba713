"""Routing analysis of the trained language model (lesson 09 and its dashboard).

Everything here reads the :class:`~moe_teach.routing.RoutingRecord` each MoE layer keeps in
``layer.last_record`` after a forward pass; nothing re-derives the routing.

* :func:`default_model`: the lesson-07 model (2 layers, 4 experts, top-2), trained on the spot
  the first time (a few seconds, with a progress bar) and cached in memory and on disk.
* :func:`route_text`: one text's routing, per token and per layer (:class:`TextRouting`).
* :func:`collect_routing`: the routing of many documents (:class:`RoutingTable`), and the
  views over it: :func:`domain_expert_shares`, :func:`expert_card`, :func:`cooccurrence`,
  :func:`routing_entropy`, :func:`routing_margin`, :func:`word_consistency`.

Tensor letters: ``L`` MoE layers, ``T`` tokens of one text, ``N`` tokens of many documents,
``E`` experts, ``k`` experts per token, ``D`` domains.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..lm.checkpoints import check_path, load_checkpoint, save_checkpoint
from ..lm.data import DOMAINS, Corpus, make_corpus
from ..lm.model import LanguageModel, LMConfig, eval_mode
from ..lm.tokenizer import WordTokenizer, split_words
from ..lm.training import (
    TrainConfig,
    build_model,
    prepare_data,
    train_model,
)
from ..moe_layer import MoEConfig
from ..routing import apply_capacity, expert_capacity
from ..transformer import BlockConfig, moe_layers
from ..validation import (
    check_bool,
    check_float_tensor,
    check_index_tensor,
    check_instance,
    check_non_negative_int,
    check_seed,
    check_text,
)
from .timing import torch_threads

# ----------------------------------------------------------------------------- the model
DEFAULT_SEED = 0
DEFAULT_DOCUMENTS_PER_DOMAIN = 300
DEFAULT_STEPS = 150
CACHE_ENV = "MOE_TEACH_CACHE"  # overrides the cache folder (default ~/.cache/moe-teach)
_MEMORY: dict[str, tuple[LanguageModel, WordTokenizer]] = {}


def default_config(vocab_size: int) -> LMConfig:
    """Lesson 07's MoE model: 2 blocks of width 64, 4 experts of hidden width 64, top-2."""
    block = BlockConfig(dim=64, num_heads=4, hidden_dim=64, moe=MoEConfig(num_experts=4, top_k=2))
    return LMConfig(vocab_size=vocab_size, max_seq_len=48, num_layers=2, block=block)


def default_train_config() -> TrainConfig:
    return TrainConfig(steps=DEFAULT_STEPS, batch_size=16, lr=3e-3, warmup_steps=15, seed=DEFAULT_SEED)


def cache_folder(cache_dir=None) -> Path:
    """``cache_dir``, else ``$MOE_TEACH_CACHE``, else ``~/.cache/moe-teach``."""
    if cache_dir is not None:
        return check_path("cache_dir", cache_dir)
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "moe-teach")


def default_checkpoint_path(cache_dir=None) -> Path:
    """Where the default model is cached; the name changes whenever its recipe changes."""
    recipe = {"config": default_config(1).to_dict(), "train": vars(default_train_config()),
              "documents_per_domain": DEFAULT_DOCUMENTS_PER_DOMAIN, "seed": DEFAULT_SEED,
              "format": "moe-teach-lm/2"}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return cache_folder(cache_dir) / f"dashboard-lm-{digest}.pt"


def default_model(cache_dir=None, progress: bool = True) -> tuple[LanguageModel, WordTokenizer]:
    """``(model, tokenizer)`` of the default model, in eval mode.

    Loaded from memory or from the disk cache when there; otherwise trained now (one thread,
    seeded, so every machine trains the same model) and written to the cache.
    """
    path = default_checkpoint_path(cache_dir)
    check_bool("progress", progress)
    key = str(path.resolve())
    if key in _MEMORY:
        return _MEMORY[key]
    if path.is_file():
        try:
            model, tokenizer = load_checkpoint(path)
            _MEMORY[key] = model, tokenizer
            return model, tokenizer
        except ValueError:
            pass  # a damaged cache file: train again and overwrite it
    prepared = prepare_data(DEFAULT_DOCUMENTS_PER_DOMAIN, seed=DEFAULT_SEED, max_seq_len=48)
    model = build_model(default_config(len(prepared.tokenizer)), seed=DEFAULT_SEED)
    with torch_threads(1):
        train_model(model, prepared.train, default_train_config(), progress=progress,
                    desc="training the default model")
    model.eval()
    try:  # write then rename, so that another process never reads a half-written file
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        save_checkpoint(partial, model, prepared.tokenizer)
        os.replace(partial, path)
    except OSError:
        pass  # a read-only home folder: keep the model in memory only
    _MEMORY[key] = model, prepared.tokenizer
    return model, prepared.tokenizer


def ensure_default_checkpoint(cache_dir=None, progress: bool = True) -> Path:
    """Train the default model if it is not cached yet; return its checkpoint path."""
    default_model(cache_dir, progress)
    return default_checkpoint_path(cache_dir)


def load_model(checkpoint=None, cache_dir=None, progress: bool = True) -> tuple[LanguageModel, WordTokenizer]:
    """``(model, tokenizer)`` from ``checkpoint`` (any file the package's ``save_checkpoint`` wrote),
    else the default model. A model without MoE layers gives a ValueError."""
    check_bool("progress", progress)
    if cache_dir is not None:
        check_path("cache_dir", cache_dir)
    if checkpoint is None:
        return default_model(cache_dir, progress)
    check_path("checkpoint", checkpoint)
    model, tokenizer = load_checkpoint(checkpoint)
    if not moe_layers(model):
        raise ValueError(f"checkpoint {checkpoint} holds a dense model: it has no MoE layers to show")
    return model, tokenizer


def validation_corpus(seed: int = DEFAULT_SEED) -> Corpus:
    """The generated corpus (its validation documents feed the dashboard's many-token views)."""
    check_seed("seed", seed)
    return make_corpus(DEFAULT_DOCUMENTS_PER_DOMAIN, seed=seed)


def domain_examples(corpus: Corpus) -> dict[str, str]:
    """One validation document per domain, ``{domain: text}``."""
    check_instance("corpus", corpus, Corpus)
    return {domain: next(d.text for d in corpus.validation if d.domain == domain) for domain in DOMAINS}


def check_words(name: str, words) -> list[str]:
    """``words`` must be a list of str."""
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise TypeError(f"{name} must be a list of str, got {words!r:.60}")
    return words


def check_expert_list(name: str, experts, length: int) -> list[int]:
    """``experts`` must be a list of ``length`` expert ids (ints >= 0)."""
    if not isinstance(experts, list) or not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0
                                                for e in experts):
        raise TypeError(f"{name} must be a list of int expert ids (>= 0), got {experts!r:.60}")
    if len(experts) != length:
        raise ValueError(f"{name} must have one entry per word ({length}), got {len(experts)}")
    return experts


# ----------------------------------------------------------------------------- one text
class LayerShapes:
    """Sizes read from ``probs [L, T, E]`` and ``experts [L, T, k]`` of a routing dataclass."""

    @property
    def num_layers(self) -> int:
        return self.probs.shape[0]

    @property
    def num_experts(self) -> int:
        return self.probs.shape[-1]

    @property
    def top_k(self) -> int:
        return self.experts.shape[-1]


@dataclass
class TextRouting(LayerShapes):
    """The routing of one text (``<bos>`` is routed too but not listed).

    Attributes:
        words: ``[T]`` the tokens shown (the text's words, cut to the model's context).
        unknown: ``[T]`` True where the word is not in the vocabulary (routed as ``<unk>``).
        probs: ``[L, T, E]`` router probabilities over all experts.
        experts: ``[L, T, k]`` chosen experts, best first.
        weights: ``[L, T, k]`` the weights their outputs were combined with.
        cut: how many words were left out because the text is longer than the context.
    """

    words: list[str]
    unknown: list[bool]
    probs: torch.Tensor
    experts: torch.Tensor
    weights: torch.Tensor
    cut: int = 0

    def __post_init__(self):
        check_words("words", self.words)
        if not isinstance(self.unknown, list) or not all(isinstance(u, bool) for u in self.unknown):
            raise TypeError(f"unknown must be a list of bool (one per word), got {self.unknown!r:.60}")
        check_float_tensor("probs", self.probs, min_dims=3)
        check_index_tensor("experts", self.experts, dims=3)
        check_float_tensor("weights", self.weights, min_dims=3)
        check_non_negative_int("cut", self.cut)

    def first_choice(self, layer: int) -> list[int]:
        """``[T]`` each token's first-choice expert at ``layer``."""
        return self.experts[layer, :, 0].tolist()

    def kept(self, layer: int, capacity_factor: float | None) -> torch.Tensor:
        """``[T, k]`` bool: which assignments fit if this text were one batch with ``capacity_factor``.

        First choices are served before second choices, in token order (GShard). ``None``: dropless.
        """
        experts = self.experts[layer]
        if capacity_factor is None:
            return torch.ones_like(experts, dtype=torch.bool)
        capacity = expert_capacity(len(self.words), self.num_experts, self.top_k, capacity_factor)
        return apply_capacity(experts, self.num_experts, capacity)


@torch.no_grad()
def route_text(model: LanguageModel, tokenizer: WordTokenizer, text: str) -> TextRouting:
    """Run ``<bos>`` + the words of ``text`` through ``model`` (eval mode) and read every MoE layer's record.

    Words beyond the context (``max_seq_len - 1`` words after ``<bos>``) are cut; ``cut`` counts them.
    """
    check_instance("model", model, LanguageModel)
    check_instance("tokenizer", tokenizer, WordTokenizer)
    check_text("text", text)
    layers = moe_layers(model)
    if not layers:
        raise ValueError("the model has no MoE layers, so there is no routing to show")
    words = split_words(text)
    room = model.config.max_seq_len - 1
    cut = max(0, len(words) - room)
    words = words[:room]
    ids = [tokenizer.bos_id] + [tokenizer.ids.get(w, tokenizer.unk_id) for w in words]
    with eval_mode(model):
        with torch_threads(1):  # tiny matrices: extra threads only add synchronisation (and on a busy
            model(torch.tensor([ids]))  # machine can be many times slower)
    records = [layer.last_record for layer in layers]
    return TextRouting(
        words=words,
        unknown=[w not in tokenizer.ids for w in words],
        probs=torch.stack([r.probs[1:] for r in records]).float(),             # drop <bos>
        experts=torch.stack([r.expert_indices[1:] for r in records]),
        weights=torch.stack([r.expert_weights[1:] for r in records]).float(),
        cut=cut,
    )
