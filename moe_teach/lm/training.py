"""Training the language model: data tensors, the loop, evaluation, routing tables, checkpoints.

One training step::

    loss = cross_entropy(model(inputs), targets)          # task loss, padding ignored
         + switch_coef * sum over layers of switch loss   # balancing (minimum 1 per layer)
         + z_coef * sum over layers of router z-loss      # keeps router logits small
    clip the gradient norm, AdamW step, learning rate from warm-up + cosine decay

The same code runs in lesson 07 and in ``moe-teach train`` (see :func:`run`).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..moe_layer import MoEConfig
from ..transformer import BlockConfig, collect_aux_losses, moe_layers
from ..validation import (
    check_bool,
    check_choice,
    check_float_tensor,
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
from .data import DOMAINS, MAX_DOCUMENTS_PER_DOMAIN, Corpus, Document, check_documents, make_corpus
from .model import MAX_LAYERS, LanguageModel, LMConfig, lm_loss
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
    """AdamW over every parameter with ``config``'s weight decay (the learning rate is set each step)."""
    check_instance("model", model, torch.nn.Module)
    check_instance("config", config, TrainConfig)
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


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


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: LanguageModel, data: LMData, batch_size: int = 64) -> dict[str, float]:
    """Validation perplexity ``exp(mean next-token loss)`` per domain and over ``"all"`` (eval mode)."""
    check_model_and_data(model, data)
    check_positive_int("batch_size", batch_size)
    was_training = model.training
    model.eval()
    try:
        nll, count = _domain_nll(model, data, batch_size)
    finally:
        model.train(was_training)
    result = {name: math.exp(nll[i] / count[i]) for i, name in enumerate(DOMAINS) if count[i] > 0}
    result["all"] = math.exp(nll.sum() / count.sum())
    return result


def _domain_nll(model: LanguageModel, data: LMData, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token loss and real-token count per domain, both ``[domains]`` float64."""
    nll = torch.zeros(len(DOMAINS), dtype=torch.float64)
    count = torch.zeros(len(DOMAINS), dtype=torch.float64)
    for rows in torch.arange(len(data)).split(batch_size):
        inputs, targets, mask = data.batch(rows)
        logits = model(inputs, token_mask=mask)
        losses = F.cross_entropy(
            logits.transpose(1, 2).float(), targets, ignore_index=data.pad_id, reduction="none"
        )  # [B, S]
        real = (targets != data.pad_id).double()
        domains = data.domains[rows]
        nll.index_add_(0, domains, (losses.double() * real).sum(dim=1))
        count.index_add_(0, domains, real.sum(dim=1))
    return nll, count


def answer_token_loss(logits: torch.Tensor, targets: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the answer positions only; ``logits [B, S, V]``, the masks ``[B, S]``.

    The knowledge corpus's answer words are the attribute values: the part of a document a
    model can only get right by having stored the fact.
    """
    check_float_tensor("logits", logits, min_dims=3)
    check_index_tensor("targets", targets, num_rows=logits.shape[0], dims=2)
    check_mask("answer_mask", answer_mask, targets.shape)
    if tuple(targets.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"targets must have shape {tuple(logits.shape[:2])}, got {tuple(targets.shape)}")
    if not answer_mask.any():
        raise ValueError("answer_mask selects no token: there is no answer token to score")
    losses = F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")  # [B, S]
    return losses[answer_mask].mean()


@torch.no_grad()
def evaluate_answers(model: LanguageModel, data: LMData, batch_size: int = 64) -> dict[str, dict[str, float]]:
    """Perplexity, answer-token loss and answer accuracy, per domain and ``"all"`` (eval mode).

    Returns ``{"perplexity": {...}, "answer_loss": {...}, "answer_accuracy": {...}}``, each keyed
    by domain name and ``"all"``. Sums are kept per domain and divided once at the end
    (the mean over all tokens, not a mean of batch means). Needs ``data.answer_mask``.
    """
    check_model_and_data(model, data)
    if data.answer_mask is None:
        raise ValueError("data has no answer_mask: encode it with answer_words (see prepare_knowledge)")
    check_positive_int("batch_size", batch_size)
    was_training = model.training
    model.eval()
    try:
        sums = {key: torch.zeros(len(DOMAINS), dtype=torch.float64)
                for key in ("nll", "tokens", "answer_nll", "answers", "correct")}
        for rows in torch.arange(len(data)).split(batch_size):
            inputs, targets, mask = data.batch(rows)
            answers = data.answer_mask[rows][:, : inputs.shape[1]]
            logits = model(inputs, token_mask=mask).float()
            mask = targets != data.pad_id  # score real targets (the position after <eos> has none)
            losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").double()  # [B, S]
            correct = (logits.argmax(dim=-1) == targets).double()
            domains = data.domains[rows]
            for key, values, where in (("nll", losses, mask), ("tokens", torch.ones_like(losses), mask),
                                       ("answer_nll", losses, answers), ("answers", torch.ones_like(losses), answers),
                                       ("correct", correct, answers)):
                sums[key].index_add_(0, domains, (values * where).sum(dim=1))
    finally:
        model.train(was_training)
    result = {"perplexity": {}, "answer_loss": {}, "answer_accuracy": {}}
    for name, index in [*((d, i) for i, d in enumerate(DOMAINS)), ("all", slice(None))]:
        total = {key: float(value[index].sum()) for key, value in sums.items()}
        if total["answers"] == 0:
            continue
        result["perplexity"][name] = math.exp(total["nll"] / total["tokens"])
        result["answer_loss"][name] = total["answer_nll"] / total["answers"]
        result["answer_accuracy"][name] = total["correct"] / total["answers"]
    return result


@torch.no_grad()
def answer_experts(model: LanguageModel, data: LMData, layer: int = 0, batch_size: int = 256) -> torch.Tensor:
    """``[A]`` the first-choice expert of every answer position (the token *before* each answer
    word, which predicts it) in MoE layer ``layer``, in eval mode; for measuring routing churn."""
    check_model_and_data(model, data)
    check_positive_int("batch_size", batch_size)
    layers = moe_layers(model)
    if not layers:
        raise ValueError("the model has no MoE layers, so there is no routing to read")
    check_non_negative_int("layer", layer, maximum=len(layers) - 1)
    if data.answer_mask is None:
        raise ValueError("data has no answer_mask: encode it with answer_words (see prepare_knowledge)")
    was_training = model.training
    model.eval()
    try:
        chosen = []
        for rows in torch.arange(len(data)).split(batch_size):
            inputs, _, mask = data.batch(rows)
            model(inputs, token_mask=mask)
            answers = data.answer_mask[rows][:, : inputs.shape[1]].reshape(-1)
            chosen.append(layers[layer].last_record.expert_indices[answers, 0])
    finally:
        model.train(was_training)
    return torch.cat(chosen)


@torch.no_grad()
def domain_expert_counts(model: LanguageModel, data: LMData, batch_size: int = 64) -> torch.Tensor:
    """``[L, domains, E]`` routing assignments of real (non-padding) tokens, per domain, in eval mode.

    Read from each MoE layer's routing record. Each (layer, domain) row sums to the domain's
    number of real tokens times ``top_k``.
    """
    check_model_and_data(model, data)
    check_positive_int("batch_size", batch_size)
    layers = moe_layers(model)
    if not layers:
        raise ValueError("the model has no MoE layers, so there is no routing to count")
    was_training = model.training
    model.eval()
    try:
        return _count_domain_experts(model, layers, data, batch_size)
    finally:
        model.train(was_training)


def _count_domain_experts(model: LanguageModel, layers: list, data: LMData, batch_size: int) -> torch.Tensor:
    counts = torch.zeros(len(layers), len(DOMAINS), layers[0].num_experts)
    for rows in torch.arange(len(data)).split(batch_size):
        inputs, _, mask = data.batch(rows)
        model(inputs, token_mask=mask)
        token_domain = data.domains[rows].unsqueeze(1).expand_as(inputs).reshape(-1)  # [T]
        real = mask.reshape(-1)
        for i, layer in enumerate(layers):
            record = layer.last_record
            chosen = record.expert_indices[real]  # [T_real, k]
            domain = token_domain[real].unsqueeze(1).expand_as(chosen)
            counts[i].index_put_(
                (domain.reshape(-1), chosen.reshape(-1)), torch.ones(chosen.numel()), accumulate=True
            )
    return counts


def domain_expert_shares(model: LanguageModel, data: LMData, batch_size: int = 64) -> torch.Tensor:
    """``[L, domains, E]`` share of each domain's routing assignments per expert (each row sums to 1)."""
    counts = domain_expert_counts(model, data, batch_size)
    return counts / counts.sum(dim=-1, keepdim=True).clamp_min(1)


# ----------------------------------------------------------------------------- checkpoints
CHECKPOINT_FORMAT = "moe-teach-lm/2"  # 2: nested config (LMConfig > BlockConfig > MoEConfig)
CHECKPOINT_FORMAT_PREFIX = "moe-teach-lm/"
CHECKPOINT_KEYS = {"format", "config", "max_seq_len", "tokenizer", "state_dict"}


def check_path(name: str, path) -> Path:
    """``path`` must be a str or a path-like object (``pathlib.Path``)."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise TypeError(f"{name} must be a file path (a non-empty str or pathlib.Path), got {path!r}")
    return Path(path)


def save_checkpoint(path, model: LanguageModel, tokenizer: WordTokenizer) -> Path:
    """Write model weights, config (a dict), tokenizer (a vocab list) and ``max_seq_len`` to ``path``."""
    check_path("path", path)
    check_instance("model", model, LanguageModel)
    check_instance("tokenizer", tokenizer, WordTokenizer)
    if len(tokenizer) != model.config.vocab_size:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {model.config.vocab_size}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "config": model.config.to_dict(),
        "max_seq_len": model.config.max_seq_len,
        "tokenizer": tokenizer.to_dict(),
        "state_dict": model.state_dict(),
    }
    # write next to the target, then rename: a failed write never leaves a half-written checkpoint
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path) -> dict:
    """The checkpoint dict at ``path``, checked; clear errors for a missing, corrupt or foreign file."""
    path = check_path("path", path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    not_ours = f"{path} is not a moe-teach checkpoint (not a file written by torch.save / save_checkpoint)"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise ValueError(not_ours)
    check_zip_integrity(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001
        # torch raises many types here (UnpicklingError, RuntimeError, ...) and its messages
        # suggest weights_only=False, which would run arbitrary code from the file: never do that
        raise ValueError(
            f"{path} is not a moe-teach checkpoint (a damaged torch file, or one holding Python "
            "objects that safe loading refuses)"
        ) from None
    found = data.get("format") if isinstance(data, dict) else None
    if isinstance(found, str) and found.startswith(CHECKPOINT_FORMAT_PREFIX) and found != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is a moe-teach checkpoint of format version {found.removeprefix(CHECKPOINT_FORMAT_PREFIX)}, "
            f"this moe-teach reads version {CHECKPOINT_FORMAT.removeprefix(CHECKPOINT_FORMAT_PREFIX)}; "
            "train it again (moe-teach train, or lesson 07) to write the current format"
        )
    if found != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a moe-teach language-model checkpoint "
            f"(expected a dict with format {CHECKPOINT_FORMAT!r})"
        )
    missing = CHECKPOINT_KEYS - set(data)
    if missing:
        raise ValueError(f"checkpoint {path} lacks the entries {sorted(missing)}")
    return data


def check_zip_integrity(path) -> None:
    """Refuse a checkpoint whose zip records fail their CRC check (bytes changed on disk or in transit)."""
    check_path("path", path)
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as error:
        raise ValueError(f"{path} is not a moe-teach checkpoint that can be read: a damaged zip archive "
                         f"({error})") from None
    if damaged is not None:
        raise ValueError(f"{path} is not a moe-teach checkpoint that can be trusted: a damaged file, its record "
                         f"{damaged!r} fails its CRC check (changed after it was written); write it again")


def load_checkpoint(path, model: LanguageModel | None = None) -> tuple[LanguageModel, WordTokenizer]:
    """Load ``(model, tokenizer)`` from ``path``.

    Without ``model`` a new one is built from the stored config. With ``model`` its config
    must equal the stored one, otherwise a ValueError names the differing fields.
    """
    data = read_checkpoint(path)
    try:
        config = LMConfig.from_dict(data["config"])
        tokenizer = WordTokenizer.from_dict(data["tokenizer"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint {path} has an invalid config or tokenizer: {error}") from None
    if data["max_seq_len"] != config.max_seq_len or len(tokenizer) != config.vocab_size:
        raise ValueError(f"checkpoint {path} is inconsistent: max_seq_len/vocab size do not match its config")
    if model is None:
        model = LanguageModel(config)
    elif not isinstance(model, LanguageModel):
        raise TypeError(f"model must be a LanguageModel or None, got {type(model).__name__}")
    elif model.config != config:
        ours, theirs = _flat(model.config.to_dict()), _flat(config.to_dict())
        diff = ", ".join(
            f"{k}: model {ours.get(k)!r} vs checkpoint {theirs.get(k)!r}"
            for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)
        )
        raise ValueError(f"checkpoint {path} was saved from another configuration ({diff})")
    _load_state(model, data["state_dict"], path)
    model.eval()
    return model, tokenizer


def _flat(config: dict, prefix: str = "") -> dict:
    """``{"block": {"dim": 64}}`` -> ``{"block.dim": 64}``, so a config difference names the field."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _load_state(model: LanguageModel, state: dict, path) -> None:
    expected = model.state_dict()
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} has no valid state_dict")
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(
            f"checkpoint {path} does not fit the model: missing keys {missing}, extra keys {extra}"
        )
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(f"checkpoint {path} has a state_dict whose entries {not_tensors} are not tensors")
    wrong = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        raise ValueError(f"checkpoint {path} has tensors of the wrong shape: {wrong}")
    model.load_state_dict(state)


# ----------------------------------------------------------------------------- command line
MIN_DOCUMENTS_PER_DOMAIN = 10


def configure_parser(parser: argparse.ArgumentParser) -> None:
    check_instance("parser", parser, argparse.ArgumentParser)
    parser.add_argument("--model", default="moe", choices=MODEL_KINDS, help="which model to train")
    parser.add_argument(
        "--steps", type=int, default=None,
        help=f"optimizer steps (>= 1; default {DEFAULT_STEPS}, with --compare {DEFAULT_COMPARE_STEPS})",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="documents per step (>= 1)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (> 0)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for the corpus, the weights and the batches"
    )
    parser.add_argument(
        "--documents-per-domain",
        type=int,
        default=300,
        help=f"generated documents per domain, 20%% held out for validation (>= {MIN_DOCUMENTS_PER_DOMAIN})",
    )
    parser.add_argument("--experts", type=int, default=4, help="experts per MoE layer (>= 1)")
    parser.add_argument("--top-k", type=int, default=2, help="experts per token (1 to --experts)")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks (>= 1)")
    parser.add_argument("--out", default="runs/lm.pt", help="checkpoint file to write (folders are created)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (>= 1); this model is so small that 1 thread is usually fastest",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--compare", action="store_true",
        help="run lesson 07's comparison on the knowledge corpus instead (upcycled MoE, continued dense, "
        "MoE from scratch, dense-active, dense-total); the last line gives each one's validation "
        "answer-token loss. Uses --steps, --upcycle-at, --seed (weights, routers and batches; the corpus "
        "stays the lesson's), --threads, --no-progress",
    )
    parser.add_argument(
        "--upcycle-at", type=int, default=None,
        help="with --compare: the dense step at which the MoE is upcycled (default: a third of --steps)",
    )


DEFAULT_STEPS, DEFAULT_COMPARE_STEPS = 600, 750
COMPARE_IGNORES = ("model", "batch_size", "lr", "documents_per_domain", "experts", "top_k", "layers", "out")


def check_compare_args(args: argparse.Namespace) -> tuple[int, int]:
    """Validate ``--compare``'s arguments; returns ``(steps, upcycle_at)``."""
    check_instance("args", args, argparse.Namespace)
    defaults = build_defaults()
    for name in COMPARE_IGNORES:
        if getattr(args, name) != defaults[name]:
            raise ValueError(f"--{name.replace('_', '-')} does not apply to --compare (it trains lesson 07's "
                             "fixed knowledge-corpus models); leave it out")
    steps = DEFAULT_COMPARE_STEPS if args.steps is None else args.steps
    check_positive_int("--steps", steps)
    check_positive_int("--threads", args.threads)
    check_non_negative_int("--seed", args.seed)
    if steps < 2:
        raise ValueError(f"--steps must be at least 2 with --compare (steps before and after upcycling), got {steps}")
    upcycle_at = max(1, steps // 3) if args.upcycle_at is None else args.upcycle_at
    check_positive_int("--upcycle-at", upcycle_at)
    if upcycle_at >= steps:
        raise ValueError(f"--upcycle-at must be between 1 and --steps - 1 = {steps - 1}, got {upcycle_at}")
    return steps, upcycle_at


def build_defaults() -> dict:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return vars(parser.parse_args([]))


def check_args(args: argparse.Namespace) -> Path:
    """Validate every argument before any training; returns the checked ``--out`` path."""
    check_instance("args", args, argparse.Namespace)
    if args.upcycle_at is not None:
        raise ValueError("--upcycle-at only applies with --compare")
    if args.steps is None:
        args.steps = DEFAULT_STEPS
    for name in ("steps", "batch_size", "experts", "layers", "threads"):
        check_positive_int(f"--{name.replace('_', '-')}", getattr(args, name))
    check_positive_int("--batch-size", args.batch_size, maximum=MAX_BATCH_SIZE)
    check_positive_int("--layers", args.layers, maximum=MAX_LAYERS)
    check_scheduled_rows(args.steps, args.batch_size)
    check_positive_float("--lr", args.lr)
    check_seed("--seed", args.seed)
    check_positive_int("--top-k", args.top_k)
    if not 1 <= args.top_k <= args.experts:
        raise ValueError(f"--top-k must be between 1 and --experts={args.experts}, got {args.top_k}")
    check_positive_int("--documents-per-domain", args.documents_per_domain, maximum=MAX_DOCUMENTS_PER_DOMAIN)
    if args.documents_per_domain < MIN_DOCUMENTS_PER_DOMAIN:
        raise ValueError(
            f"--documents-per-domain must be at least {MIN_DOCUMENTS_PER_DOMAIN}, "
            f"got {args.documents_per_domain}"
        )
    return check_writable(args.out)


def check_writable(out) -> Path:
    """Create ``out``'s folder and check a file can be written there, so a run cannot fail at the end."""
    path = check_path("--out", out)
    if path.is_dir():
        raise ValueError(f"--out must be a file path, but {path} is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--out: cannot create the folder {path.parent} ({error.strerror})") from None
    if path.exists() and not path.is_file():
        raise ValueError(f"--out must be a regular file path, but {path} is a device or another special file")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"--out: {path} is not writable (check the folder's permissions)")
    try:  # really write: permissions can pass while the disk is full or the file system refuses writes
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        raise ValueError(f"--out: cannot write a file next to {path} ({error.strerror or error})") from None
    return path


def run_compare(args: argparse.Namespace) -> int:
    """``moe-teach train --compare``: lesson 07's five arms for one seed; the last line is machine-readable."""
    from .compare import prepare_knowledge, run_comparison  # compare imports this module

    steps, upcycle_at = check_compare_args(args)
    torch.set_num_threads(args.threads)
    prepared = prepare_knowledge(seed=0)  # the lesson's corpus; --seed varies weights, routers and batches
    comparison = run_comparison(prepared, seed=args.seed, steps=steps, upcycle_at=upcycle_at,
                                progress=not args.no_progress)
    print(f"seed {args.seed}, {steps} steps, upcycled at step {upcycle_at}; validation answer-token loss "
          "(perplexity, answer accuracy):")
    for name, arm in comparison.arms.items():
        scores = arm.scores
        print(f"  {name:<16}{scores['answer_loss']['all']:.4f}  ({scores['perplexity']['all']:.3f}, "
              f"{scores['answer_accuracy']['all']:.1%}), {arm.ms_per_step:.1f} ms per step")
    print(comparison.last_line())
    return 0


def run(args: argparse.Namespace) -> int:
    check_instance("args", args, argparse.Namespace)
    if args.compare:
        return run_compare(args)
    out = check_args(args)
    torch.set_num_threads(args.threads)
    prepared = prepare_data(args.documents_per_domain, seed=args.seed)
    block = BlockConfig(dim=64, num_heads=4, hidden_dim=64, moe=MoEConfig(num_experts=args.experts, top_k=args.top_k))
    base = LMConfig(vocab_size=len(prepared.tokenizer), num_layers=args.layers, block=block)
    model = build_model(model_config(args.model, base), seed=args.seed)
    train_config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=max(1, args.steps // 10),
        seed=args.seed,
    )
    train_model(model, prepared.train, train_config, progress=not args.no_progress, desc=args.model)
    perplexity = evaluate(model, prepared.validation)
    try:
        path = save_checkpoint(out, model, prepared.tokenizer)
    except OSError as error:
        raise ValueError(f"--out: could not write the checkpoint to {out} ({error.strerror or error}); "
                         "nothing was written") from None
    print("validation perplexity: " + ", ".join(f"{k} {v:.2f}" for k, v in perplexity.items()))
    print(f"checkpoint written to {path}")
    return 0
