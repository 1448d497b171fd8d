"""The built-in offline task ``"sentiment_reviews"``: short reviews, VADER as the gold "human".

A seeded probabilistic grammar writes short reviews (8–20 tokens) such as

    "i think the food was really lovely , but the service was not good ."
    "the camera looked quite dull and my friend said it was a waste of money !"

from a small closed vocabulary (~250 words: subjects, link verbs, adverbs, positive / negative /
neutral adjectives from the VADER lexicon, conjunctions, whole stock phrases, and the punctuation
tokens ``.`` ``,`` ``!``). Tokens are separated by single spaces, so ``text.split()`` is the word-level
tokenisation and :func:`vocabulary` lists every token the grammar can emit (no unknowns).

Each review draws a mood (positive / negative / neutral, a third each) and then every clause draws
its own polarity around that mood, so reviews often mix clauses ("good but the ending was boring")
and a policy can move the score token by token. Prompts are the grammar's openings
("the movie was", "i think the food", "honestly the service") and split by a fixed hash into
disjoint ``train`` / ``eval`` sets. The gold reward is VADER compound of the response only.

The pipeline this task drives (all on a laptop CPU): pretrain a tiny word-level LM on
:func:`generate_corpus`, train a reward model on comparisons of its continuations labelled by
``rewards.labelers`` from the gold score, then PPO the LM toward the RM and track the gold score.
"""

from __future__ import annotations

import functools
import zlib
from typing import Sequence

import numpy as np

PUNCT = (".", ",", "!")

OPENERS = ("honestly", "i think", "overall", "well", "in my opinion", "to me", "i guess",
           "my friend said", "we thought", "i felt that", "for me", "last night", "all in all",
           "i have to say")
SUBJECTS = ("the movie", "the film", "this restaurant", "the service", "my new phone", "the food",
            "the hotel", "the book", "the staff", "the camera", "this album", "the show", "the game",
            "the room", "the price", "the ending", "the plot", "the music", "the coffee", "the pizza",
            "the screen", "the battery", "the story", "the waiter", "this laptop", "the app",
            "the trip", "the class", "the car", "the concert", "the menu", "the bed", "the view",
            "the teacher", "the soup", "the new song", "our guide", "the beach")
VERBS = ("was", "is", "felt", "looked", "seemed")
_VERB_P = (0.45, 0.2, 0.15, 0.1, 0.1)
INTENSIFIERS = ("very", "really", "quite", "so", "extremely", "pretty", "totally", "truly")
DAMPENERS = ("somewhat", "a bit", "kind of", "slightly", "rather")
POSITIVE = ("great", "wonderful", "lovely", "amazing", "good", "fun", "excellent", "nice", "awesome",
            "perfect", "beautiful", "fantastic", "brilliant", "pleasant", "sweet", "charming",
            "enjoyable", "impressive", "delightful", "fresh", "friendly", "cool", "clever",
            "exciting", "cute", "comfortable", "clean", "helpful", "funny", "superb", "special",
            "easy")
NEGATIVE = ("awful", "terrible", "boring", "bad", "sad", "horrible", "poor", "dull", "ugly",
            "disappointing", "annoying", "rude", "broken", "stupid", "weak", "painful", "messy",
            "lame", "nasty", "dirty", "useless", "gross", "confusing", "weird", "strange",
            "difficult", "noisy", "worst")
NEUTRAL = ("okay", "fine", "average", "normal", "long", "short", "loud", "quiet", "simple", "new",
           "small", "big", "expensive", "different", "typical", "busy", "plain", "usual", "late",
           "early", "cold", "dark", "old", "fast", "soft", "heavy", "crowded", "slow", "cheap",
           "smooth", "red", "full")
POSITIVE_PHRASES = ("i loved it", "i would recommend it", "we had fun", "it made me smile",
                    "i enjoyed every minute", "i will come back", "we were very happy",
                    "what a nice surprise", "i was glad we went", "it was worth it")
NEGATIVE_PHRASES = ("i hated it", "what a waste of money", "it was a total mess", "never again",
                    "it made me angry", "i was disappointed", "we were so tired",
                    "i want my money back", "nobody liked it", "it was a bad idea")
NEUTRAL_PHRASES = ("i went there on monday", "it was my first time", "we stayed for two hours",
                   "nothing more to say", "i read it last week", "my friend came with me",
                   "it took a while", "we paid at the door", "i saw it twice", "the place was near")
CONNECTORS = (",", "and", "but", "although", "while", "yet", "so", "because", ".")
_CONNECTOR_P = (0.15, 0.2, 0.2, 0.08, 0.07, 0.05, 0.07, 0.06, 0.12)

MIN_WORDS, MAX_WORDS = 8, 20
MAX_PROMPT_WORDS = 5
EVAL_FRACTION_MOD = 3  # a prompt is held out when crc32(prompt) % 3 == 0 (about a third)

# Polarity of clauses given the review's mood: P(pos), P(neu), P(neg).
# VADER's positive words score higher than its negative ones, hence the tilt toward "neg" below:
# with it the corpus is about 39% compound > 0.3, 32% < -0.3 and 29% in between.
_FIRST_CLAUSE = {"pos": (0.75, 0.1, 0.15), "neg": (0.05, 0.1, 0.85), "neu": (0.1, 0.75, 0.15)}
_LATER_CLAUSE = {"pos": (0.6, 0.2, 0.2), "neg": (0.15, 0.2, 0.65), "neu": (0.1, 0.75, 0.15)}
_POLS = ("pos", "neu", "neg")
_ADJ = {"pos": POSITIVE, "neu": NEUTRAL, "neg": NEGATIVE}
_PHRASES = {"pos": POSITIVE_PHRASES, "neu": NEUTRAL_PHRASES, "neg": NEGATIVE_PHRASES}
_OPPOSITE = {"pos": "neg", "neg": "pos", "neu": "neu"}


def _pick(rng: np.random.Generator, options: Sequence, p=None):
    return options[int(rng.choice(len(options), p=p))]


# ----------------------------------------------------------------------------- the grammar

def _predicate(rng: np.random.Generator, pol: str) -> list[str]:
    """``[adverb] adjective [and adjective]`` with the requested polarity.

    Negation flips: a positive predicate is sometimes "not <negative>" (VADER scores "not bad" > 0).
    """
    if pol != "neu" and rng.random() < 0.15:
        return ["not", _pick(rng, _ADJ[_OPPOSITE[pol]])]
    u = rng.random()
    adverb = (_pick(rng, INTENSIFIERS).split() if u < 0.35 else
              _pick(rng, DAMPENERS).split() if u < 0.45 else
              ["not"] if pol == "neu" and u < 0.5 else [])
    words = adverb + [_pick(rng, _ADJ[pol])]
    if rng.random() < 0.2:
        words += ["and", _pick(rng, _ADJ[pol])]
    return words


def _clause_polarity(rng: np.random.Generator, mood: str, first: bool) -> str:
    return _pick(rng, _POLS, p=(_FIRST_CLAUSE if first else _LATER_CLAUSE)[mood])


def _piece(rng: np.random.Generator, mood: str) -> list[str]:
    """A continuation piece: ``connector`` + (clause with a new subject | "it <verb> ..." | phrase)."""
    conn = _pick(rng, CONNECTORS, p=_CONNECTOR_P)
    pol = _clause_polarity(rng, mood, first=False)
    u = rng.random()
    if u < 0.55:
        body = _pick(rng, SUBJECTS).split() + [_pick(rng, VERBS, p=_VERB_P)] + _predicate(rng, pol)
    elif u < 0.75:
        body = ["it", _pick(rng, VERBS, p=_VERB_P)] + _predicate(rng, pol)
    else:
        body = _pick(rng, _PHRASES[pol]).split()
    return [conn] + body


def _complete(rng: np.random.Generator, head: list[str], has_verb: bool) -> list[str]:
    """Finish a review whose first words are ``head`` (opener + subject [+ verb]).

    Returns the completion tokens (without ``head``), ending in "." or "!", so that
    ``len(head) + len(completion)`` is in [MIN_WORDS, MAX_WORDS].
    """
    mood = _pick(rng, ("pos", "neg", "neu"))
    words = [] if has_verb else [_pick(rng, VERBS, p=_VERB_P)]
    words += _predicate(rng, _clause_polarity(rng, mood, first=True))
    n_extra = 1 + int(rng.random() < 0.45)
    while True:
        piece = _piece(rng, mood)
        total = len(head) + len(words) + len(piece) + 1  # + final punctuation
        if total > MAX_WORDS:
            if len(head) + len(words) + 1 >= MIN_WORDS:
                break
            continue  # too long and still too short without it: draw another piece
        words += piece
        n_extra -= 1
        if n_extra <= 0 and len(head) + len(words) + 1 >= MIN_WORDS:
            break
    if words[-1] in PUNCT:  # a piece never ends in punctuation, but keep the invariant explicit
        words.pop()
    words.append("!" if mood != "neu" and rng.random() < 0.25 else ".")
    return words


def _head(rng: np.random.Generator) -> list[str]:
    opener = _pick(rng, OPENERS).split() if rng.random() < 0.45 else []
    return opener + _pick(rng, SUBJECTS).split()


def generate_corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` reviews from the grammar; deterministic in ``seed``, different seeds differ."""
    rng = np.random.default_rng((int(seed), 0))
    out = []
    for _ in range(int(n)):
        head = _head(rng)
        out.append(" ".join(head + _complete(rng, head, has_verb=False)))
    return out


@functools.lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """Every token the grammar can emit (sorted): a word-level tokenizer over it has no unknowns."""
    words: set[str] = set(PUNCT) | {"it", "not", "and"}
    for group in (OPENERS, SUBJECTS, VERBS, INTENSIFIERS, DAMPENERS, POSITIVE, NEGATIVE, NEUTRAL,
                  POSITIVE_PHRASES, NEGATIVE_PHRASES, NEUTRAL_PHRASES, CONNECTORS):
        for item in group:
            words.update(item.split())
    return tuple(sorted(words))


# ----------------------------------------------------------------------------- prompts

@functools.lru_cache(maxsize=1)
def _prompt_pool() -> dict[str, tuple[tuple[str, ...], bool]]:
    """All prompts: opener? + subject [+ verb], 2–5 words -> (head words, ends with a verb)."""
    pool: dict[str, tuple[tuple[str, ...], bool]] = {}
    for opener in ("",) + OPENERS:
        for subject in SUBJECTS:
            head = tuple((opener + " " + subject).split())
            for verb in (None,) + VERBS:
                words = head + ((verb,) if verb else ())
                if 2 <= len(words) <= MAX_PROMPT_WORDS:
                    pool[" ".join(words)] = (words, verb is not None)
    return pool


def is_eval_prompt(prompt: str) -> bool:
    """The fixed held-out rule: ``crc32(prompt) % 3 == 0`` (independent of any seed)."""
    return zlib.crc32(prompt.encode("utf-8")) % EVAL_FRACTION_MOD == 0


@functools.lru_cache(maxsize=2)
def _split(split: str) -> tuple[str, ...]:
    if split not in ("train", "eval"):
        raise KeyError(f"unknown split {split!r} (known: 'train', 'eval')")
    want_eval = split == "eval"
    return tuple(sorted(p for p in _prompt_pool() if is_eval_prompt(p) == want_eval))


def prompts(split: str = "train", n: int | None = None, seed: int = 0) -> list[str]:
    """Prompts of ``split`` ('train' or 'eval'; disjoint), in a seeded random order.

    ``n=None`` returns every distinct prompt of the split; otherwise the first ``n`` of the seeded
    permutation (distinct while ``n`` ≤ the split's size, then the permutation repeats).
    """
    pool = _split(split)
    rng = np.random.default_rng((int(seed), 1))
    perm = [pool[i] for i in rng.permutation(len(pool))]
    if n is None:
        return perm
    reps = -(-int(n) // len(perm))
    return (perm * reps)[: int(n)]


def continuations(prompt_list: Sequence[str], k: int, seed: int = 0) -> list[list[str]]:
    """``k`` grammar continuations of each prompt (the corpus distribution conditioned on the
    prompt): useful as an oracle sampler, e.g. for best-of-k headroom. ``prompt + " " + c`` is a
    corpus-like review."""
    pool = _prompt_pool()
    rng = np.random.default_rng((int(seed), 2))
    out = []
    for p in prompt_list:
        if p not in pool:
            raise ValueError(f"{p!r} is not a prompt of this task")
        head, has_verb = pool[p]
        out.append([" ".join(_complete(rng, list(head), has_verb)) for _ in range(int(k))])
    return out


def demonstrations(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (prompt, completion) pairs on *train* prompts, completions drawn from the grammar
    (not sentiment-filtered: SFT learns the format "response then EOS", not the reward)."""
    rng = np.random.default_rng((int(seed), 3))
    pool = _prompt_pool()
    train = _split("train")
    out = []
    for _ in range(int(n)):
        p = train[int(rng.integers(len(train)))]
        head, has_verb = pool[p]
        out.append((p, " ".join(_complete(rng, list(head), has_verb))))
    return out
