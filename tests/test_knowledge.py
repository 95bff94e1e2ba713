"""The knowledge corpus: deterministic, facts shared between the splits but documents never."""

import pytest

from moe_teach.lm.data import DOMAINS
from moe_teach.lm.knowledge import (
    ATTRIBUTES,
    NAME_WORDS,
    document_facts,
    make_entities,
    make_knowledge_corpus,
    value_words,
)
from moe_teach.lm.tokenizer import split_words


@pytest.fixture(scope="module")
def corpus():
    return make_knowledge_corpus(seed=0)


def test_same_seed_same_corpus_and_another_seed_differs(corpus):
    again = make_knowledge_corpus(seed=0)
    assert again.train == corpus.train and again.validation == corpus.validation
    assert make_knowledge_corpus(seed=1).train != corpus.train


def test_sizes(corpus):
    assert len(corpus.entities) == 4 * 144
    assert len(corpus.train) == 8 * 576 and len(corpus.validation) == 576
    for domain in DOMAINS:  # every pair of name words is one entity, so no single word names it
        firsts, seconds = NAME_WORDS[domain]
        names = {e.name for e in corpus.entities if e.domain == domain}
        assert names == {f"{a} {b}" for a in firsts for b in seconds}


def test_every_validation_fact_is_in_training_but_no_validation_document(corpus):
    train_facts = set().union(*(document_facts(d) for d in corpus.train))
    validation_facts = set().union(*(document_facts(d) for d in corpus.validation))
    assert len(validation_facts) == 4 * 576 and validation_facts <= train_facts
    assert not {d.text for d in corpus.validation} & {d.text for d in corpus.train}


def test_validation_order_is_new_for_its_entity_but_seen_in_training(corpus):
    orders_by_entity = {}
    for doc in corpus.train:
        orders_by_entity.setdefault(doc.entity, set()).add(doc.order)
    train_orders = set().union(*orders_by_entity.values())
    for doc in corpus.validation:
        assert len(orders_by_entity[doc.entity]) == 8
        assert doc.order not in orders_by_entity[doc.entity] and doc.order in train_orders


def test_value_words_belong_to_one_domain_only(corpus):
    by_domain = {d: set() for d in DOMAINS}
    for doc in corpus.train:
        by_domain[doc.domain].update(split_words(doc.text))
    for domain in DOMAINS:
        values = value_words(domain)
        assert len(values) == 4 * 16
        assert values <= by_domain[domain]
        others = set().union(*(by_domain[d] for d in DOMAINS if d != domain))
        assert not values & others, f"{domain} value words used elsewhere: {sorted(values & others)}"


def test_facts_follow_the_entities():
    entities = make_entities(seed=0)
    for entity in entities[:20]:
        assert set(entity.facts) == set(ATTRIBUTES[entity.domain])
        assert all(value in ATTRIBUTES[entity.domain][a] for a, value in entity.facts.items())


def test_bad_train_orders():
    with pytest.raises(ValueError, match="train_orders"):
        make_knowledge_corpus(train_orders=24)
    with pytest.raises(ValueError, match="train_orders"):
        make_knowledge_corpus(train_orders=0)


def test_fewer_name_words_give_a_smaller_corpus_with_the_same_guarantees():
    small = make_knowledge_corpus(seed=0, name_words=8)
    assert len(small.entities) == 4 * 64
    assert len(small.train) == 8 * 256 and len(small.validation) == 256
    for domain in DOMAINS:  # every pair of the first 8 first and 8 second words
        firsts, seconds = NAME_WORDS[domain]
        names = {e.name for e in small.entities if e.domain == domain}
        assert names == {f"{a} {b}" for a in firsts[:8] for b in seconds[:8]}
    train_facts = set().union(*(document_facts(d) for d in small.train))
    validation_facts = set().union(*(document_facts(d) for d in small.validation))
    assert len(validation_facts) == 4 * 256 and validation_facts <= train_facts
    assert not {d.text for d in small.validation} & {d.text for d in small.train}
    assert make_knowledge_corpus(seed=0, name_words=8).train == small.train


@pytest.mark.parametrize(("name_words", "error"), [(1, ValueError), (13, ValueError), (8.0, TypeError),
                                                   (True, TypeError)])
def test_bad_name_words(name_words, error):
    with pytest.raises(error, match="name_words"):
        make_knowledge_corpus(name_words=name_words)
    with pytest.raises(error, match="name_words"):
        make_entities(name_words=name_words)
