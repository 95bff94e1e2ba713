"""A small generated corpus in four domains: finance, legal, code and general text.

Nothing is downloaded. Each document is a few sentences filled in from templates and word
lists with a seeded ``random.Random``, so the same seed always gives the same corpus.

* Each domain has its own vocabulary (``revenue``, ``plaintiff``, ``return``, ``garden`` ...),
  so an expert *could* specialise in one domain.
* Function words (``the``, ``a``, ``in``, ``.`` ...) appear in the three prose domains, so
  the router cannot always tell the domain from the word alone. The code domain shares only
  a few words with the others (:func:`shared_words` counts them).

Text is lower case with punctuation already separated by spaces, which suits a word-level
tokenizer (see :mod:`moe_teach.lm.tokenizer`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..validation import (
    check_choice,
    check_instance,
    check_positive_float,
    check_positive_int,
    check_seed,
    check_text,
)
from .tokenizer import split_words

DOMAINS = ("finance", "legal", "code", "general")

MAX_DOCUMENTS_PER_DOMAIN = 100_000   # 400,000 documents take seconds; 10**9 would run for hours
MAX_SENTENCES = 1_000
SHARED_WORDS = ("the", "of", "a", "to", "and", "in", "is", "for", "with", "on", "this", "that", ".", ",")

WORDS = {
    "finance": {
        "company": ["the bank", "the fund", "the firm", "the lender", "the insurer", "the broker"],
        "metric": ["revenue", "profit", "margin", "debt", "cash flow", "dividend", "earnings", "yield"],
        "move": ["rose", "fell", "climbed", "dropped", "doubled", "stalled"],
        "amount": ["four percent", "two million", "ten percent", "a billion", "six million", "half a point"],
        "period": ["the first quarter", "the second quarter", "the fiscal year", "the last quarter"],
        "asset": ["bonds", "shares", "stocks", "futures", "options", "loans"],
        "actor": ["investors", "analysts", "traders", "shareholders", "creditors"],
        "view": ["bullish", "cautious", "bearish", "optimistic"],
    },
    "legal": {
        "party": [
            "the plaintiff",
            "the defendant",
            "the tenant",
            "the landlord",
            "the contractor",
            "the court",
        ],
        "document": ["contract", "agreement", "lease", "statute", "clause", "warranty"],
        "duty": ["indemnify", "notify", "comply with", "terminate", "enforce", "waive"],
        "ruling": ["liable", "negligent", "in breach", "exempt", "entitled to damages"],
        "time": ["thirty days", "the effective date", "written notice", "the term", "the hearing"],
        "law": ["the statute", "section four", "the regulation", "the provision", "the act"],
        "verdict": ["dismissed", "upheld", "appealed", "reversed", "settled"],
    },
    "code": {
        "func": ["parse", "load", "save", "compute", "render", "validate", "sort", "fetch"],
        "var": ["items", "data", "config", "path", "result", "buffer", "index", "count"],
        "type": ["list", "dict", "string", "int", "tensor", "array"],
        "op": ["+", "-", "*", "==", "<", ">"],
        "value": ["0", "1", "none", "true", "false", "[ ]"],
        "error": ["valueerror", "keyerror", "typeerror", "indexerror"],
    },
    "general": {
        "person": ["my sister", "the teacher", "our neighbour", "a child", "the farmer", "my friend"],
        "place": ["the garden", "the village", "the beach", "the market", "the forest", "the kitchen"],
        "verb": ["walked", "cooked", "painted", "sang", "wandered", "played"],
        "thing": ["a cake", "the flowers", "a song", "the dog", "an apple", "the river"],
        "weather": ["sunny", "rainy", "cold", "warm", "windy", "quiet"],
        "day": ["morning", "evening", "weekend", "holiday", "afternoon"],
        "feeling": ["happy", "tired", "calm", "curious", "proud"],
    },
}

TEMPLATES = {
    "finance": [
        "{company} reported that {metric} {move} {amount} in {period} .",
        "{actor} are {view} on {asset} after {metric} {move} .",
        "the price of {asset} {move} as {actor} sold {asset} .",
        "in {period} , {metric} of {company} {move} by {amount} .",
        "{actor} expect the {metric} of {company} to be {view} .",
    ],
    "legal": [
        "{party} shall {duty} the {document} within {time} .",
        "the court found that {party} was {ruling} under {law} .",
        "under the {document} , {party} must {duty} {party} .",
        "the claim against {party} was {verdict} on {time} .",
        "pursuant to {law} , the {document} is void for {party} .",
    ],
    "code": [
        "def {func} ( {var} ) : return {var} {op} {value}",
        "if {var} {op} {value} : raise {error} ( {var} )",
        "for {var} in {var} : {var} = {func} ( {var} )",
        "{var} = {type} ( {var} ) # {func} the {var}",
        "return {func} ( {var} , {var} = {value} )",
    ],
    "general": [
        "{person} {verb} in {place} on a {weather} {day} .",
        "on a {weather} {day} , {person} found {thing} in {place} .",
        "{person} was {feeling} with {thing} and {thing} .",
        "in the {day} {person} {verb} to {place} with {thing} .",
        "it was {weather} , so {person} {verb} and felt {feeling} .",
    ],
}


@dataclass(frozen=True)
class Document:
    """One generated document: its text and the domain it was generated from."""

    text: str
    domain: str

    def __post_init__(self):
        check_text("text", self.text)
        check_choice("domain", self.domain, DOMAINS)


@dataclass
class Corpus:
    """Train and validation documents (each list holds every domain equally often)."""

    train: list[Document]
    validation: list[Document]

    def __post_init__(self):
        check_documents("train", self.train)
        check_documents("validation", self.validation)

    def domains(self) -> tuple[str, ...]:
        return DOMAINS


def make_sentence(domain: str, rng: random.Random) -> str:
    """One sentence of ``domain``: a random template with each slot filled independently."""
    check_choice("domain", domain, DOMAINS)
    check_instance("rng", rng, random.Random)
    template = rng.choice(TEMPLATES[domain])
    words = WORDS[domain]
    pieces = []
    for piece in template.split(" "):
        if piece.startswith("{") and piece.endswith("}"):
            piece = rng.choice(words[piece[1:-1]])
        pieces.append(piece)
    return " ".join(pieces)


def make_document(
    domain: str, rng: random.Random, min_sentences: int = 2, max_sentences: int = 3
) -> Document:
    """A document of ``min_sentences`` to ``max_sentences`` sentences from one domain."""
    check_choice("domain", domain, DOMAINS)
    check_instance("rng", rng, random.Random)
    check_positive_int("min_sentences", min_sentences, maximum=MAX_SENTENCES)
    check_positive_int("max_sentences", max_sentences, maximum=MAX_SENTENCES)
    if max_sentences < min_sentences:
        raise ValueError(f"max_sentences must be >= min_sentences={min_sentences}, got {max_sentences}")
    count = rng.randint(min_sentences, max_sentences)
    return Document(" ".join(make_sentence(domain, rng) for _ in range(count)), domain)


def make_corpus(documents_per_domain: int = 300, validation_fraction: float = 0.2, seed: int = 0) -> Corpus:
    """Generate the corpus: ``documents_per_domain`` documents of each domain, split train/validation.

    The split is made per domain, so both parts are balanced; documents are then shuffled.
    """
    check_positive_int("documents_per_domain", documents_per_domain, maximum=MAX_DOCUMENTS_PER_DOMAIN)
    check_positive_float("validation_fraction", validation_fraction)
    check_seed("seed", seed)
    if not 0 < validation_fraction < 1:
        raise ValueError(
            f"validation_fraction must be between 0 and 1 (exclusive), got {validation_fraction}"
        )
    rng = random.Random(seed)
    num_validation = max(1, round(documents_per_domain * validation_fraction))
    if num_validation >= documents_per_domain:
        raise ValueError("documents_per_domain is too small to leave training documents after the split")
    train, validation = [], []
    for domain in DOMAINS:
        docs = [make_document(domain, rng) for _ in range(documents_per_domain)]
        validation += docs[:num_validation]
        train += docs[num_validation:]
    rng.shuffle(train)
    rng.shuffle(validation)
    return Corpus(train, validation)


def domain_counts(documents: list[Document]) -> dict[str, int]:
    """How many documents of each domain (every domain listed, zero if absent)."""
    check_documents("documents", documents)
    counts = dict.fromkeys(DOMAINS, 0)
    for doc in documents:
        counts[doc.domain] += 1
    return counts


def domain_vocabularies(documents: list[Document]) -> dict[str, set[str]]:
    """The set of words each domain's documents use."""
    check_documents("documents", documents)

    words = {domain: set() for domain in DOMAINS}
    for doc in documents:
        words[doc.domain].update(split_words(doc.text))
    return words


def shared_words(documents: list[Document]) -> dict[str, set[str]]:
    """For each domain, the words it shares with at least one other domain."""
    words = domain_vocabularies(documents)
    return {
        domain: words[domain] & set().union(*(words[d] for d in DOMAINS if d != domain))
        for domain in DOMAINS
    }


def check_documents(name: str, documents) -> list[Document]:
    """``documents`` must be a list of :class:`Document` of known domains."""
    if not isinstance(documents, (list, tuple)):
        raise TypeError(f"{name} must be a list of Document, got {type(documents).__name__}")
    for doc in documents:
        check_instance(f"{name} entry", doc, Document)
        check_choice(f"{name} entry's domain", doc.domain, DOMAINS)
    return documents
