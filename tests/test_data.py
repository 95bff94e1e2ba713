import pytest

from moe_teach.lm.data import (
    DOMAINS,
    SHARED_WORDS,
    WORDS,
    domain_counts,
    domain_vocabularies,
    make_corpus,
    shared_words,
)
from moe_teach.lm.tokenizer import split_words


def test_same_seed_same_corpus():
    assert make_corpus(20, seed=3) == make_corpus(20, seed=3)


def test_different_seed_different_corpus():
    assert make_corpus(20, seed=3).train != make_corpus(20, seed=4).train


def test_domains_balanced_in_both_splits():
    corpus = make_corpus(25, validation_fraction=0.2, seed=0)
    assert domain_counts(corpus.train) == dict.fromkeys(DOMAINS, 20)
    assert domain_counts(corpus.validation) == dict.fromkeys(DOMAINS, 5)


def test_domains_have_own_vocabulary_and_share_function_words():
    corpus = make_corpus(30, seed=0)
    words = {d: set() for d in DOMAINS}
    for doc in corpus.train:
        words[doc.domain].update(split_words(doc.text))
    for domain in DOMAINS:
        others = set().union(*(words[d] for d in DOMAINS if d != domain))
        assert words[domain] - others, f"{domain} has no words of its own"
    shared = set.intersection(*words.values())
    assert "the" in shared
    assert len(shared & set(SHARED_WORDS)) >= 1
    assert set(WORDS) == set(DOMAINS)


@pytest.mark.parametrize("bad", [0, 1.5, 1])
def test_bad_split_fraction(bad):
    with pytest.raises(ValueError, match="validation_fraction"):
        make_corpus(10, validation_fraction=bad)


def test_shared_words_are_counted_per_domain():
    corpus = make_corpus(30, seed=0)
    vocabularies = domain_vocabularies(corpus.train)
    shared = shared_words(corpus.train)
    for domain in DOMAINS:
        assert shared[domain] <= vocabularies[domain]
        for word in shared[domain]:
            assert any(word in vocabularies[d] for d in DOMAINS if d != domain)
    assert "the" in shared["finance"] and "revenue" not in shared["finance"]
