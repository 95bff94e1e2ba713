"""Training the language model: data tensors, the schedule and the training loop.

One training step::

    loss = cross_entropy(model(inputs), targets)          # task loss, padding ignored
         + switch_coef * sum over layers of switch loss   # balancing (minimum 1 per layer)
         + z_coef * sum over layers of router z-loss      # keeps router logits small
    clip the gradient norm, AdamW step, learning rate from warm-up + cosine decay

The same code runs in lesson 07 and in ``moe-teach train`` (:mod:`moe_teach.lm.train_cli`);
evaluation is in :mod:`moe_teach.lm.evaluation`, checkpoints in :mod:`moe_teach.lm.checkpoints`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..transformer import collect_aux_losses, moe_layers
from ..validation import (
    check_bool,
    check_choice,
    check_index_tensor,
    check_instance,
    check_mask,
    check_non_negative_float,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
    check_seed,
    check_text,
)
from .data import DOMAINS, Corpus, Document, check_documents, make_corpus
from .model import LanguageModel, LMConfig, lm_loss
from .tokenizer import WordTokenizer

MODEL_KINDS = ("moe", "dense-active", "dense-total")
MAX_BATCH_SIZE = 4_096             # documents per step; 100,000 would need tens of GiB of logits
MAX_SCHEDULED_ROWS = 100_000_000   # steps * batch_size: the batch schedule is one int64 tensor of this size


# ----------------------------------------------------------------------------- data
@dataclass
class LMData:
    """Documents as tensors: ``inputs``/``targets`` ``[N, S]`` (targets shifted by one), ``domains [N]``."""

    inputs: torch.Tensor
    targets: torch.Tensor
    domains: torch.Tensor
    pad_id: int = 0
    answer_mask: torch.Tensor | None = None  # [N, S] True where the target is an answer word (knowledge corpus)

    def __post_init__(self):
        check_index_tensor("inputs", self.inputs, dims=2)
        check_index_tensor("targets", self.targets, dims=2)
        if self.targets.shape != self.inputs.shape:
            raise ValueError(f"targets must have the shape of inputs {tuple(self.inputs.shape)}, "
                             f"got {tuple(self.targets.shape)}")
        check_index_tensor("domains", self.domains, num_rows=self.inputs.shape[0], dims=1)
        check_non_negative_int("pad_id", self.pad_id)
        if self.answer_mask is not None:
            check_mask("answer_mask", self.answer_mask, self.inputs.shape)

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def batch(self, rows: torch.Tensor):
        """``(inputs, targets, token_mask)`` of ``rows``, cut to the longest real sequence among them."""
        inputs, targets = self.inputs[rows], self.targets[rows]
        mask = inputs != self.pad_id
        length = int(mask.sum(dim=1).max())
        return inputs[:, :length], targets[:, :length], mask[:, :length]


def encode_documents(
    documents: list[Document], tokenizer: WordTokenizer, max_seq_len: int, answer_words=None
) -> LMData:
    """``<bos> words <eos>`` per document, cut to ``max_seq_len + 1`` ids, padded with ``<pad>``.

    ``answer_words`` (a set of words, e.g. the knowledge corpus's values) gives
    ``answer_mask``: True where the *target* is one of them.
    """
    check_documents("documents", documents)
    check_instance("tokenizer", tokenizer, WordTokenizer)
    check_positive_int("max_seq_len", max_seq_len)
    if not documents:
        raise ValueError("documents must be a non-empty list of Document")
    if answer_words is not None and (isinstance(answer_words, str) or not hasattr(answer_words, "__iter__")):
        raise TypeError(f"answer_words must be a set of words, got {type(answer_words).__name__}")
    rows = [tokenizer.encode(doc.text, add_bos=True, add_eos=True)[: max_seq_len + 1] for doc in documents]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    domains = torch.tensor([DOMAINS.index(doc.domain) for doc in documents])
    answer_mask = None
    if answer_words is not None:
        answer_ids = torch.tensor(sorted({tokenizer.encode(w)[0] for w in answer_words} - {tokenizer.unk_id}))
        answer_mask = torch.isin(ids[:, 1:], answer_ids)
    return LMData(ids[:, :-1], ids[:, 1:], domains, tokenizer.pad_id, answer_mask)


@dataclass
class Prepared:
    """Everything a run needs besides the model: corpus, tokenizer and the two tensor sets."""

    corpus: Corpus          # a KnowledgeCorpus (a Corpus subclass) for lesson 07's knowledge corpus
    tokenizer: WordTokenizer
    train: LMData
    validation: LMData

    def __post_init__(self):
        check_instance("corpus", self.corpus, Corpus)
        check_instance("tokenizer", self.tokenizer, WordTokenizer)
        check_instance("train", self.train, LMData)
        check_instance("validation", self.validation, LMData)


def prepare_data(documents_per_domain: int = 300, seed: int = 0, max_seq_len: int = 48) -> Prepared:
    """Generate the corpus, build the tokenizer from the training text, encode both splits."""
    check_positive_int("max_seq_len", max_seq_len)
    corpus = make_corpus(documents_per_domain, seed=seed)
    tokenizer = WordTokenizer.from_texts(doc.text for doc in corpus.train)
    return Prepared(
        corpus,
        tokenizer,
        encode_documents(corpus.train, tokenizer, max_seq_len),
        encode_documents(corpus.validation, tokenizer, max_seq_len),
    )


def model_config(kind: str, base: LMConfig) -> LMConfig:
    """``"moe"`` -> ``base``; ``"dense-active"``/``"dense-total"`` -> its dense twin."""
    check_choice("kind", kind, MODEL_KINDS)
    check_instance("base", base, LMConfig)
    return base if kind == "moe" else base.dense_twin(kind.split("-")[1])


def build_model(config: LMConfig, seed: int = 0) -> LanguageModel:
    """A freshly initialised model; the seed makes the initial weights reproducible."""
    check_instance("config", config, LMConfig)
    check_seed("seed", seed)
    torch.manual_seed(seed)
    return LanguageModel(config)


# ----------------------------------------------------------------------------- training
@dataclass
class TrainConfig:
    """Optimisation settings (the same for every model compared)."""

    steps: int = 150
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 15
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    switch_coef: float = 1e-2
    z_coef: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        check_positive_int("steps", self.steps)
        check_positive_int("batch_size", self.batch_size, maximum=MAX_BATCH_SIZE)
        check_scheduled_rows(self.steps, self.batch_size)
        check_positive_float("lr", self.lr)
        check_non_negative_int("warmup_steps", self.warmup_steps)
        check_non_negative_float("min_lr_ratio", self.min_lr_ratio)
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be between 0 and 1, got {self.min_lr_ratio}")
        check_non_negative_float("weight_decay", self.weight_decay)
        check_positive_float("grad_clip", self.grad_clip)
        check_non_negative_float("switch_coef", self.switch_coef)
        check_non_negative_float("z_coef", self.z_coef)
        check_seed("seed", self.seed)


def check_scheduled_rows(steps: int, batch_size: int) -> None:
    """Refuse a schedule of more than :data:`MAX_SCHEDULED_ROWS` rows before allocating it."""
    if steps * batch_size > MAX_SCHEDULED_ROWS:
        raise ValueError(f"steps * batch_size = {steps * batch_size:,} rows is more than {MAX_SCHEDULED_ROWS:,}; "
                         "choose fewer steps or a smaller batch_size")


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr``."""
    check_non_negative_int("step", step)
    check_instance("config", config, TrainConfig)
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def batch_schedule(num_rows: int, steps: int, batch_size: int, seed: int) -> torch.Tensor:
    """``[steps, batch_size]`` row ids: shuffled epochs from a seeded generator (same for every model)."""
    check_positive_int("num_rows", num_rows)
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size, maximum=MAX_BATCH_SIZE)
    check_seed("seed", seed)
    check_scheduled_rows(steps, batch_size)
    generator = torch.Generator().manual_seed(seed)
    epochs = math.ceil(steps * batch_size / num_rows)
    order = torch.cat([torch.randperm(num_rows, generator=generator) for _ in range(epochs)])
    return order[: steps * batch_size].view(steps, batch_size)


@dataclass
class History:
    """What happened at each step: losses, learning rate, gradient norm, expert load ``[L, E]``."""

    loss: list[float] = field(default_factory=list)
    switch: list[float] = field(default_factory=list)
    z: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    expert_load: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self):
        for name in ("loss", "switch", "z", "lr", "grad_norm", "expert_load"):
            if not isinstance(getattr(self, name), list):
                raise TypeError(f"{name} must be a list, got {type(getattr(self, name)).__name__}")


def make_optimizer(model: LanguageModel, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over every parameter with ``config``'s weight decay (the learning rate is set each step).

    ``fused=True`` updates all parameters in one kernel instead of about ten small operations
    per parameter tensor: an MoE model has many small tensors (four per expert), so this
    matters more for it than for its dense twin.
    """
    check_instance("model", model, torch.nn.Module)
    check_instance("config", config, TrainConfig)
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)


def train_model(
    model: LanguageModel,
    data: LMData,
    config: TrainConfig | None = None,
    progress: bool = True,
    desc: str = "training",
    start_step: int = 0,
    stop_step: int | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    callback=None,
) -> History:
    """Train ``model`` in place on ``data``; returns the per-step :class:`History`.

    ``config.steps`` is the length of the whole schedule (learning rates and batches); this
    call runs steps ``start_step`` to ``stop_step`` (default: to the end) of it. Pass the same
    ``optimizer`` (from :func:`make_optimizer`) to continue a run: two calls 0..n and n..end
    give exactly the weights of one uninterrupted call. Without one, a fresh AdamW starts.
    ``callback(step, model)``, if given, runs after each optimizer step (e.g. to read routing).
    """
    check_model_and_data(model, data)
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    check_bool("progress", progress)
    check_text("desc", desc)
    if optimizer is not None:
        check_instance("optimizer", optimizer, torch.optim.Optimizer)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a function callback(step, model), got {type(callback).__name__}")
    stop_step = config.steps if stop_step is None else stop_step
    check_non_negative_int("start_step", start_step)
    check_positive_int("stop_step", stop_step)
    if not start_step < stop_step <= config.steps:
        raise ValueError(f"need 0 <= start_step < stop_step <= config.steps={config.steps}, "
                         f"got start_step={start_step}, stop_step={stop_step}")
    optimizer = make_optimizer(model, config) if optimizer is None else optimizer
    schedule = batch_schedule(len(data), config.steps, config.batch_size, config.seed)
    history = History()
    model.train()
    bar = tqdm(range(start_step, stop_step), desc=desc, disable=not progress, leave=True)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        inputs, targets, mask = data.batch(schedule[step])
        task = lm_loss(model(inputs, token_mask=mask), targets, data.pad_id)
        aux = collect_aux_losses(model)
        loss = task
        if aux:  # dense models have no router, hence no auxiliary losses
            loss = task + config.switch_coef * aux["switch"] + config.z_coef * aux["z"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        _record(history, task, aux, optimizer.param_groups[0]["lr"], grad_norm, model)
        if callback is not None:
            callback(step, model)
        if step % 10 == 0 or step == stop_step - 1:
            bar.set_postfix(loss=f"{task.item():.3f}", refresh=False)  # redrawn at tqdm's own pace
    bar.close()
    if progress:  # one plain line that stays readable in a static copy of the notebook
        print(f"{desc}: steps {start_step}-{stop_step} of {config.steps}, "
              f"final training loss {history.loss[-1]:.3f}")
    return history


def check_model_and_data(model, data) -> None:
    """``model`` must be a :class:`LanguageModel` and ``data`` an :class:`LMData` whose ids it can embed."""
    check_instance("model", model, LanguageModel)
    check_instance("data", data, LMData)
    if len(data) == 0:
        raise ValueError("data holds no rows")
    if data.inputs.shape[1] > model.config.max_seq_len:
        raise ValueError(f"data has sequences of {data.inputs.shape[1]} tokens, longer than the model's "
                         f"max_seq_len={model.config.max_seq_len}")


def _record(history: History, task, aux, lr, grad_norm, model) -> None:
    history.loss.append(task.item())
    history.switch.append(aux["switch"].item() if aux else float("nan"))
    history.z.append(aux["z"].item() if aux else float("nan"))
    history.lr.append(lr)
    history.grad_norm.append(float(grad_norm))
    layers = moe_layers(model)
    if layers:
        counts = torch.stack([layer.last_record.load_per_expert.float() for layer in layers])  # [L, E], no padding
        history.expert_load.append(counts / counts.sum(dim=1, keepdim=True))
