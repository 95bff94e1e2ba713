"""Lesson 07's experiment: MoE from scratch, sparse upcycling and the dense baselines on facts.

Five arms, trained on the same knowledge corpus with the same schedule and batches:

==================  ===============================================================
``dense_active``    dense, feed-forward width ``top_k * hidden_dim`` (same compute per
                    token as the MoE), trained for all ``steps``
``scratch_moe``     the MoE, from a fresh initialisation, for all ``steps``
``upcycled``        ``dense_active``'s weights at step ``upcycle_at``, upcycled
                    (:func:`~moe_teach.lm.upcycle.upcycle`), trained for the remaining steps
``dense_continued`` the same step-``upcycle_at`` dense weights, trained for the same
                    remaining steps with the same fresh optimizer: the fair twin of
                    ``upcycled``
``dense_total``     dense, width ``num_experts * hidden_dim`` (the MoE's total parameters,
                    ``num_experts / top_k`` times its compute per token): the ceiling
==================  ===============================================================

The score of each arm is its validation answer-token loss (see
:func:`~moe_teach.lm.evaluation.evaluate_answers`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

from ..moe_layer import MoEConfig
from ..transformer import BlockConfig
from ..validation import (
    check_instance,
    check_non_negative_float,
    check_non_negative_int,
    check_positive_int,
    check_seed,
)
from .evaluation import answer_experts, evaluate_answers
from .knowledge import make_knowledge_corpus, value_words
from .model import LanguageModel, LMConfig
from .tokenizer import WordTokenizer
from .training import (
    History,
    Prepared,
    TrainConfig,
    build_model,
    encode_documents,
    make_optimizer,
    train_model,
)
from .upcycle import upcycle

ARMS = ("upcycled", "dense_continued", "scratch_moe", "dense_active", "dense_total")
NAME_WORDS = 8  # entities per domain in lesson 07's default run: 8 x 8 (the full corpus has 12 x 12)
KNOWLEDGE_SEQ_LEN = 16  # <bos> + 2 name words + 4 attribute-value pairs (up to 3 words each) fit easily


def prepare_knowledge(seed: int = 0, train_orders: int = 8, name_words: int = NAME_WORDS) -> Prepared:
    """The knowledge corpus, its tokenizer and both splits as tensors with ``answer_mask``."""
    check_seed("seed", seed)
    corpus = make_knowledge_corpus(train_orders, seed=seed, name_words=name_words)
    tokenizer = WordTokenizer.from_texts(doc.text for doc in corpus.train)
    answers = value_words()
    return Prepared(
        corpus,
        tokenizer,
        encode_documents(corpus.train, tokenizer, KNOWLEDGE_SEQ_LEN, answers),
        encode_documents(corpus.validation, tokenizer, KNOWLEDGE_SEQ_LEN, answers),
    )


def knowledge_config(vocab_size: int, num_experts: int = 4, top_k: int = 1, hidden_dim: int = 32) -> LMConfig:
    """One block (the facts must live in its feed-forward), width 64, 4 heads, top-1 of 4 experts."""
    block = BlockConfig(dim=64, num_heads=4, hidden_dim=hidden_dim,
                        moe=MoEConfig(num_experts=num_experts, top_k=top_k))
    return LMConfig(vocab_size=vocab_size, max_seq_len=KNOWLEDGE_SEQ_LEN, num_layers=1, block=block)


def knowledge_train_config(steps: int = 450, seed: int = 0, batch_size: int = 64) -> TrainConfig:
    """AdamW lr 1e-2, 10% warm-up then cosine to 0.1x, clip 1, batch 64, Switch 1e-2, z-loss 1e-3.

    450 steps of 64 documents see the default corpus's 2,048 training documents (8 x 8 entities
    per domain) about 14 times; the full 12 x 12 corpus has 4,608. On a CPU with one
    thread a step of 64 costs well under twice a step of 32 (small matrices: fixed costs per
    operation dominate), so this is the cheaper way to the same number of documents.
    """
    check_positive_int("steps", steps)
    return TrainConfig(steps=steps, batch_size=batch_size, lr=1e-2, warmup_steps=max(1, steps // 10), min_lr_ratio=0.1,
                       weight_decay=0.01, grad_clip=1.0, switch_coef=1e-2, z_coef=1e-3, seed=seed)


@dataclass
class ArmResult:
    """One trained arm: the model, its histories (one per training call), seconds and steps trained."""

    model: LanguageModel
    histories: list[History] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    scores: dict = field(default_factory=dict)

    def __post_init__(self):
        check_instance("model", self.model, LanguageModel)
        if not isinstance(self.histories, list) or not all(isinstance(h, History) for h in self.histories):
            raise TypeError(f"histories must be a list of History, got {type(self.histories).__name__}")
        check_non_negative_float("seconds", self.seconds)
        check_non_negative_int("steps", self.steps)
        check_instance("scores", self.scores, dict)

    @property
    def ms_per_step(self) -> float:
        return 1000 * self.seconds / self.steps


@dataclass
class Comparison:
    """All arms of one seed, the routing churn of ``scratch_moe`` measured during training, and
    ``upcycle_source``: the dense model at step ``upcycle_at`` that ``upcycled`` started from."""

    seed: int
    steps: int
    upcycle_at: int
    arms: dict[str, ArmResult]
    churn_steps: list[int] = field(default_factory=list)
    churn: list[float] = field(default_factory=list)
    upcycle_source: LanguageModel | None = None

    def __post_init__(self):
        check_seed("seed", self.seed)
        check_positive_int("steps", self.steps)
        check_positive_int("upcycle_at", self.upcycle_at)
        if not isinstance(self.arms, dict) or not all(isinstance(a, ArmResult) for a in self.arms.values()):
            raise TypeError(f"arms must be a dict of arm name -> ArmResult, got {type(self.arms).__name__}")

    def answer_loss(self, arm: str) -> float:
        return self.arms[arm].scores["answer_loss"]["all"]

    def last_line(self) -> str:
        """``upcycled=U dense_continued=C scratch_moe=S dense_active=A dense_total=T`` (answer-token loss)."""
        return " ".join(f"{arm}={self.answer_loss(arm):.4f}" for arm in ARMS if arm in self.arms)


def _timed_train(arm: ArmResult, data, config, desc, progress, **kwargs) -> None:
    start = time.perf_counter()
    history = train_model(arm.model, data, config, progress=progress, desc=desc, **kwargs)
    arm.seconds += time.perf_counter() - start
    arm.histories.append(history)
    arm.steps += len(history.loss)


def run_comparison(
    prepared: Prepared,
    seed: int = 0,
    steps: int = 450,
    upcycle_at: int = 150,
    arms=ARMS,
    churn_every: int = 50,
    progress: bool = True,
    batch_size: int = 64,
) -> Comparison:
    """Train the requested ``arms`` for one ``seed`` (weights and batches); returns a :class:`Comparison`.

    ``dense_active`` is trained in two calls (0..upcycle_at, then on with the same optimizer),
    which gives exactly the weights of one uninterrupted run; its step-``upcycle_at`` weights
    are the starting point of ``upcycled`` and ``dense_continued``, both trained from there
    with a fresh AdamW on the remaining steps of the same schedule. ``scratch_moe`` is trained
    in pieces of ``churn_every`` steps so the routing of the validation answer tokens can be
    compared between checkpoints (churn: the share that changed expert).
    """
    check_instance("prepared", prepared, Prepared)
    check_positive_int("steps", steps)
    check_positive_int("upcycle_at", upcycle_at)
    check_positive_int("churn_every", churn_every)
    if isinstance(arms, str) or not isinstance(arms, (tuple, list, set)):
        raise TypeError(f"arms must be a sequence of arm names ({', '.join(ARMS)}), got {arms!r}")
    if upcycle_at >= steps:
        raise ValueError(f"upcycle_at must be smaller than steps={steps}, got {upcycle_at}")
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise ValueError(f"arms: unknown {unknown}; choose from {', '.join(ARMS)}")
    config = knowledge_config(len(prepared.tokenizer))
    moe = config.block.moe
    train_config = knowledge_train_config(steps, seed, batch_size)
    data = prepared.train
    result = Comparison(seed, steps, upcycle_at, {})

    needs_dense = {"dense_active", "upcycled", "dense_continued"} & set(arms)
    if needs_dense:
        dense = ArmResult(build_model(config.dense_twin("active"), seed=seed))
        optimizer = make_optimizer(dense.model, train_config)
        _timed_train(dense, data, train_config, "dense_active", progress, stop_step=upcycle_at, optimizer=optimizer)
        snapshot = copy.deepcopy(dense.model)
        result.upcycle_source = snapshot
        if "upcycled" in arms:
            upcycled = ArmResult(upcycle(snapshot, moe.num_experts, moe.top_k, router_seed=seed))
            _timed_train(upcycled, data, train_config, "upcycled", progress, start_step=upcycle_at)
            result.arms["upcycled"] = upcycled
        if "dense_continued" in arms:
            continued = ArmResult(copy.deepcopy(snapshot))
            _timed_train(continued, data, train_config, "dense_continued", progress, start_step=upcycle_at)
            result.arms["dense_continued"] = continued
        if "dense_active" in arms:
            _timed_train(dense, data, train_config, "dense_active", progress, start_step=upcycle_at,
                         optimizer=optimizer)
            result.arms["dense_active"] = dense
    if "scratch_moe" in arms:
        scratch = ArmResult(build_model(config, seed=seed))
        routing, reading_seconds = {}, [0.0]

        def read_routing(step, model):
            if (step + 1) % churn_every == 0:
                start = time.perf_counter()
                routing[step + 1] = answer_experts(model, prepared.validation)
                reading_seconds[0] += time.perf_counter() - start

        _timed_train(scratch, data, train_config, "scratch_moe", progress, callback=read_routing)
        scratch.seconds -= reading_seconds[0]  # time per step counts training only
        checkpoints = sorted(routing)
        for before, after in zip(checkpoints[:-1], checkpoints[1:]):
            result.churn_steps.append(after)
            result.churn.append(float((routing[after] != routing[before]).float().mean()))
        result.arms["scratch_moe"] = scratch
    if "dense_total" in arms:
        total = ArmResult(build_model(config.dense_twin("total"), seed=seed))
        _timed_train(total, data, train_config, "dense_total", progress)
        result.arms["dense_total"] = total
    for arm in result.arms.values():
        arm.scores = evaluate_answers(arm.model, prepared.validation)
    return result
