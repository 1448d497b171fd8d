"""The built-in "sentiment_reviews" task: corpus grammar, prompts, demonstrations, registry."""

import numpy as np
import pytest

from rlhf_jax.tasks import TASKS, Task, generate_corpus, get_task, register_task
from rlhf_jax.tasks import sentiment

TASK = get_task("sentiment_reviews")


def test_corpus_is_deterministic_per_seed_and_seeds_differ():
    a, b, c = generate_corpus(50, seed=3), generate_corpus(50, seed=3), generate_corpus(50, seed=4)
    assert a == b
    assert a != c
    assert TASK.corpus(50, seed=3) == a
    assert len(generate_corpus(7, seed=0)) == 7


def test_corpus_tokens_are_in_a_small_closed_vocabulary():
    vocab = TASK.vocabulary()
    assert 150 <= len(vocab) <= 300
    assert len(set(vocab)) == len(vocab)
    assert all(w == w.lower() and " " not in w for w in vocab)
    corpus = TASK.corpus(1000, seed=1)
    used = {w for text in corpus for w in text.split()}
    assert used <= set(vocab), used - set(vocab)
    assert len(used) >= 150  # the grammar actually uses its vocabulary
    lengths = [len(t.split()) for t in corpus]
    assert min(lengths) >= sentiment.MIN_WORDS and max(lengths) <= sentiment.MAX_WORDS
    assert all(t.split()[-1] in (".", "!") for t in corpus)
    assert all(t == " ".join(t.split()) for t in corpus)  # single-space separated tokens


def test_vader_distribution_of_corpus_spreads():
    corpus = TASK.corpus(2000, seed=0)
    g = TASK.gold(corpus, corpus)
    assert g.dtype == np.float32 and g.shape == (2000,)
    pos, neg = np.mean(g > 0.3), np.mean(g < -0.3)
    mid = 1.0 - pos - neg
    assert pos >= 0.15 and neg >= 0.15 and mid >= 0.15, (pos, neg, mid)
    assert g.std() > 0.4


def test_reviews_often_mix_positive_and_negative_words():
    corpus = TASK.corpus(1000, seed=2)
    pos, neg = set(sentiment.POSITIVE), set(sentiment.NEGATIVE)
    mixed = [t for t in corpus if set(t.split()) & pos and set(t.split()) & neg]
    assert len(mixed) / len(corpus) > 0.15  # about 0.2 (0.34 counting all VADER-lexicon words)


def test_prompts_train_eval_disjoint_and_well_formed():
    train, eval_ = TASK.prompts("train"), TASK.prompts("eval")
    assert len(set(train)) == len(train) >= 64
    assert len(set(eval_)) == len(eval_) >= 32
    assert not set(train) & set(eval_)
    vocab = set(TASK.vocabulary())
    for p in train + eval_:
        assert 2 <= len(p.split()) <= 5 and set(p.split()) <= vocab
    assert all(sentiment.is_eval_prompt(p) for p in eval_)
    assert not any(sentiment.is_eval_prompt(p) for p in train)
    # the split does not depend on the seed; the order does
    assert set(TASK.prompts("eval", seed=5)) == set(eval_)
    assert TASK.prompts("eval", seed=5) != eval_
    with pytest.raises(KeyError):
        TASK.prompts("test")


def test_prompts_n_is_deterministic_and_distinct_then_repeats():
    a = TASK.prompts("train", n=64, seed=1)
    assert a == TASK.prompts("train", n=64, seed=1)
    assert len(set(a)) == 64
    size = len(TASK.prompts("eval"))
    more = TASK.prompts("eval", n=size + 3, seed=0)
    assert len(more) == size + 3 and more[size:] == more[:3]


def test_prompts_are_openings_of_corpus_reviews():
    pool = set(TASK.prompts("train")) | set(TASK.prompts("eval"))
    corpus = TASK.corpus(300, seed=0)
    # reviews start with a prompt of the pool, except the few whose opener + subject is longer
    # than the 5-word prompt limit ("i have to say the new song ...")
    starts = [any(" ".join(t.split()[:k]) in pool for k in (2, 3, 4, 5)) for t in corpus]
    assert np.mean(starts) > 0.9
    for t, ok in zip(corpus, starts):
        if not ok:
            head = [o + " " + s for o in sentiment.OPENERS for s in sentiment.SUBJECTS
                    if t.startswith(o + " " + s + " ")]
            assert head and len(head[0].split()) > sentiment.MAX_PROMPT_WORDS, t


def test_demonstrations_use_train_prompts_and_complete_reviews():
    demos = TASK.demonstrations(200, seed=0)
    assert demos == TASK.demonstrations(200, seed=0)
    assert demos != TASK.demonstrations(200, seed=1)
    train = set(TASK.prompts("train"))
    vocab = set(TASK.vocabulary())
    for prompt, completion in demos:
        assert prompt in train
        words = (prompt + " " + completion).split()
        assert sentiment.MIN_WORDS <= len(words) <= sentiment.MAX_WORDS
        assert words[-1] in (".", "!") and set(words) <= vocab
    g = TASK.gold([p for p, _ in demos], [c for _, c in demos])
    assert g.min() < -0.3 and g.max() > 0.3  # not sentiment-filtered


def test_continuations_best_of_k_beats_a_random_one():
    prompts = TASK.prompts("eval", n=40, seed=0)
    conts = TASK.continuations(prompts, 8, seed=0)
    assert conts == TASK.continuations(prompts, 8, seed=0)
    assert [len(c) for c in conts] == [8] * 40
    g = np.stack([TASK.gold([p] * 8, c) for p, c in zip(prompts, conts)])
    assert g.max(axis=1).mean() > g[:, 0].mean() + 0.3
    with pytest.raises(ValueError):
        TASK.continuations(["zebra crossing"], 2)


def test_gold_scores_the_response_only():
    g = TASK.gold(["the movie was great and wonderful"], ["awful ."])
    assert g[0] < -0.4
    assert TASK.gold_name == "vader"


def test_registry_lookup_and_did_you_mean():
    assert TASKS["sentiment_reviews"] is TASK
    with pytest.raises(KeyError, match="did you mean 'sentiment_reviews'"):
        get_task("sentiment_review")
    assert register_task(TASK) is TASK  # re-registering the same object is fine
    clash = Task(name="sentiment_reviews", gold_name="vader", corpus_fn=generate_corpus,
                 prompts_fn=sentiment.prompts, demonstrations_fn=sentiment.demonstrations,
                 vocabulary_fn=sentiment.vocabulary)
    with pytest.raises(ValueError):
        register_task(clash)
    with pytest.raises(NotImplementedError):
        clash.continuations(["the movie"], 1)
