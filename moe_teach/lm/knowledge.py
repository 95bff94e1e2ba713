"""A generated *knowledge* corpus: facts about named entities in four domains.

Template text (:mod:`moe_teach.lm.data`) has little to store: after a few hundred steps every
model knows the templates and the rest is random word choice. Facts are different: each one
must be remembered, so the model's feed-forward capacity (its parameters) decides how many
it can hold. That is the setting where a Mixture-of-Experts, with more parameters at the same
compute per token, can pay off.

* Each domain has ``12 x 12`` entities named by a word pair (every pair is used, so neither
  word alone identifies an entity); ``name_words=n`` keeps the first ``n`` words of each kind,
  ``n x n`` entities (lesson 07's default run uses 8 x 8, so it trains in seconds).
* Each entity has 4 attributes, each with one of 16 values; value words belong to one
  domain only.
* A document names one entity and states its four ``attribute value`` pairs in some order,
  for example ``"vorn quill ticker zant sector mining ceo okafor based in lisbon"``.
* Each entity has ``train_orders`` training documents and one validation document, each in a
  different attribute order; the validation order is one that entity never uses in training
  (other entities do). So every validation *fact* is in the training data, but no
  validation *document* is.

The attribute order cannot be predicted, so the whole-text perplexity has a floor; the loss
on the value words (the *answer tokens*) measures stored knowledge cleanly.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from ..validation import check_choice, check_instance, check_positive_int, check_seed, check_text
from .data import DOMAINS, Corpus, Document

NAME_WORDS = {  # first word x second word = 144 entity names per domain
    "finance": (
        ["vorn", "tessa", "brill", "kanto", "mardo", "quell", "sorin", "dalby", "fenwick", "larch", "orvel", "pim"],
        ["quill", "ledger", "crest", "vault", "mint", "holdings", "capital", "trust", "equity", "bourse", "fiscal",
         "tally"],
    ),
    "legal": (
        ["harrow", "bexley", "corwin", "dunmore", "ellery", "fairlie", "gorran", "hollis", "ingram", "jessop",
         "kelso", "lomax"],
        ["versus", "estate", "petition", "appeal", "tribunal", "docket", "charter", "covenant", "decree", "motion",
         "inquest", "writ"],
    ),
    "code": (
        ["py", "fast", "tiny", "deep", "lib", "open", "micro", "auto", "hyper", "mono", "poly", "flex"],
        ["parser", "cache", "loader", "server", "router", "kernel", "widget", "socket", "engine", "daemon", "plugin",
         "bridge"],
    ),
    "general": (
        ["anna", "boris", "clara", "diego", "elena", "farid", "greta", "hiro", "ines", "jonas", "kira", "luca"],
        ["baker", "fisher", "miller", "turner", "carter", "porter", "weaver", "archer", "mason", "hunter", "cooper",
         "walker"],
    ),
}

ATTRIBUTES = {  # attribute phrase -> its 16 possible values (words of this domain only)
    "finance": {
        "ticker": ["zant", "qorx", "vemb", "plix", "drun", "kwat", "blor", "snez", "yirk", "gofe", "hupt", "mavo",
                   "treb", "wusk", "jolp", "fenz"],
        "sector": ["mining", "banking", "retail", "energy", "shipping", "insurance", "telecom", "pharma", "steel",
                   "textiles", "aviation", "utilities", "timber", "tourism", "media", "chemicals"],
        "ceo": ["okafor", "lindqvist", "moreau", "tanaka", "novak", "fischer", "rossi", "kowalski", "haddad", "silva",
                "jensen", "dubois", "petrov", "nakamura", "oconnor", "varga"],
        "based in": ["lisbon", "zurich", "oslo", "dublin", "vienna", "madrid", "prague", "geneva", "helsinki",
                     "warsaw", "athens", "brussels", "milan", "tallinn", "riga", "sofia"],
    },
    "legal": {
        "court": ["district", "appellate", "supreme", "county", "federal", "admiralty", "chancery", "probate",
                  "magistrate", "circuit", "crown", "tax", "family", "labour", "military", "commercial"],
        "year": ["1990", "1991", "1992", "1993", "1994", "1995", "1996", "1997", "1998", "1999", "2000", "2001",
                 "2002", "2003", "2004", "2005"],
        "ruling": ["liable", "acquitted", "dismissed", "upheld", "reversed", "remanded", "settled", "enjoined",
                   "vacated", "affirmed", "overturned", "quashed", "granted", "denied", "stayed", "annulled"],
        "judge": ["abernathy", "blackwood", "castellano", "delacroix", "eastwood", "fairbanks", "goldberg", "hawthorne",
                  "irving", "jacobsen", "kingsley", "lancaster", "montague", "northcott", "oakley", "pemberton"],
    },
    "code": {
        "returns": ["int", "str", "list", "dict", "tuple", "bool", "float", "bytes", "tensor", "array", "none",
                    "iterator", "generator", "frozenset", "path", "future"],
        "module": ["os", "sys", "json", "re", "math", "itertools", "asyncio", "typing", "pathlib", "logging",
                   "socketserver", "pickle", "struct", "hashlib", "zlib", "csv"],
        "raises": ["valueerror", "keyerror", "typeerror", "indexerror", "oserror", "runtimeerror", "memoryerror",
                   "timeouterror", "eoferror", "importerror", "nameerror", "zerodivisionerror", "overflowerror",
                   "assertionerror", "lookuperror", "unicodeerror"],
        "calls": ["fetch", "parse", "render", "validate", "flush", "encode", "decode", "compile", "dispatch",
                  "serialize", "tokenize", "allocate", "schedule", "compress", "hash", "sort"],
    },
    "general": {
        "lives in": ["village", "harbour", "valley", "meadow", "forest", "island", "canyon", "orchard", "lagoon",
                     "prairie", "glacier", "oasis", "marsh", "summit", "cove", "delta"],
        "works as": ["nurse", "farmer", "teacher", "painter", "plumber", "chef", "pilot", "gardener", "librarian",
                     "tailor", "sailor", "dentist", "potter", "jeweller", "beekeeper", "locksmith"],
        "likes": ["apples", "jazz", "chess", "tea", "poetry", "hiking", "cheese", "kites", "opera", "puzzles",
                  "rowing", "pottery", "soup", "stars", "tango", "origami"],
        "has a": ["dog", "cat", "parrot", "horse", "goat", "rabbit", "tortoise", "canary", "hamster", "ferret",
                  "pony", "donkey", "goldfish", "lizard", "piglet", "duckling"],
    },
}

ORDERS = tuple(itertools.permutations(range(4)))  # the 24 orders of an entity's 4 attributes


@dataclass(frozen=True)
class FactDocument(Document):
    """A knowledge document: ``text``, ``domain``, the ``entity`` it names and its attribute ``order``."""

    entity: str = ""
    order: tuple[int, ...] = ()

    def __post_init__(self):
        super().__post_init__()
        check_text("entity", self.entity)
        check_order(self.order)


@dataclass(frozen=True)
class Entity:
    """One entity: its two-word name, its domain and ``facts`` (attribute phrase -> value word)."""

    name: str
    domain: str
    facts: dict

    def __post_init__(self):
        check_text("name", self.name)
        check_choice("domain", self.domain, DOMAINS)
        if not isinstance(self.facts, dict) or len(self.facts) != 4:
            raise TypeError(f"facts must be a dict of the 4 attributes of a {self.domain} entity, "
                            f"got {self.facts!r:.60}")

    def __hash__(self) -> int:
        return hash((self.name, self.domain))


@dataclass
class KnowledgeCorpus(Corpus):
    """Train/validation :class:`FactDocument` lists plus the :class:`Entity` list they describe."""

    entities: list[Entity] = None

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.entities, list) or not all(isinstance(e, Entity) for e in self.entities):
            raise TypeError(f"entities must be a list of Entity, got {type(self.entities).__name__}")


def make_entities(seed: int = 0, name_words: int = 12) -> list[Entity]:
    """4 x ``name_words**2`` entities; each attribute's value drawn uniformly from its 16 (seeded).

    A domain's entities are every pair of its first ``name_words`` first words and first
    ``name_words`` second words (all 12 of each: 144 entities per domain).
    """
    check_name_words(name_words)
    rng = random.Random(check_seed("seed", seed))
    entities = []
    for domain in DOMAINS:
        firsts, seconds = NAME_WORDS[domain]
        for first, second in itertools.product(firsts[:name_words], seconds[:name_words]):
            facts = {attribute: rng.choice(values) for attribute, values in ATTRIBUTES[domain].items()}
            entities.append(Entity(f"{first} {second}", domain, facts))
    return entities


def fact_text(entity: Entity, order) -> str:
    """``"<name> attr value attr value ..."`` with the attributes in ``order`` (indices 0-3)."""
    check_instance("entity", entity, Entity)
    check_order(order)
    attributes = list(entity.facts)
    pairs = (f"{attributes[i]} {entity.facts[attributes[i]]}" for i in order)
    return f"{entity.name} " + " ".join(pairs)


def check_order(order) -> tuple[int, ...]:
    """``order`` must be a tuple holding each of the 4 attribute indices 0-3 once."""
    if not isinstance(order, tuple) or sorted(order) != [0, 1, 2, 3] or any(type(i) is not int for i in order):
        raise ValueError(f"order must be a tuple of the attribute indices 0, 1, 2, 3, each once, got {order!r}")
    return order


def check_name_words(name_words: int) -> None:
    """``name_words`` must be 2 to 12: at least two of each word, so neither word alone names an entity."""
    if isinstance(name_words, bool) or not isinstance(name_words, int):
        raise TypeError(f"name_words must be an int between 2 and 12, got {type(name_words).__name__}")
    if not 2 <= name_words <= 12:
        raise ValueError(f"name_words must be between 2 and 12 (12 name words of each kind per domain), "
                         f"got {name_words}")


def make_knowledge_corpus(train_orders: int = 8, seed: int = 0, name_words: int = 12) -> KnowledgeCorpus:
    """The corpus: per entity ``train_orders`` training documents and 1 validation document.

    The ``train_orders + 1`` attribute orders of an entity are distinct (drawn from the 24),
    the last one is its validation order. Documents are shuffled (seeded).
    """
    check_positive_int("train_orders", train_orders)
    if train_orders > len(ORDERS) - 1:
        raise ValueError(f"train_orders must be at most {len(ORDERS) - 1} (24 orders, one kept for validation), "
                         f"got {train_orders}")
    check_name_words(name_words)
    rng = random.Random(check_seed("seed", seed))
    entities = make_entities(seed, name_words)
    train, validation = [], []
    for entity in entities:
        orders = rng.sample(ORDERS, train_orders + 1)
        documents = [FactDocument(fact_text(entity, o), entity.domain, entity.name, o) for o in orders]
        train += documents[:-1]
        validation.append(documents[-1])
    rng.shuffle(train)
    rng.shuffle(validation)
    return KnowledgeCorpus(train, validation, entities)


def value_words(domain: str | None = None) -> set[str]:
    """The answer words (attribute values) of one domain, or of all domains when ``domain`` is None."""
    domains = DOMAINS if domain is None else (check_choice("domain", domain, DOMAINS),)
    return {value for d in domains for values in ATTRIBUTES[d].values() for value in values}


def document_facts(document: FactDocument) -> set[tuple[str, str, str]]:
    """The ``(entity, attribute, value)`` facts a document states, read back from its text."""
    check_instance("document", document, FactDocument)
    words = document.text.split(" ")[2:]
    facts, i = set(), 0
    while i < len(words):
        for attribute in ATTRIBUTES[document.domain]:
            length = len(attribute.split(" "))
            if " ".join(words[i : i + length]) == attribute:
                facts.add((document.entity, attribute, words[i + length]))
                i += length + 1
                break
        else:
            raise ValueError(f"cannot parse document {document.text!r}")
    return facts
