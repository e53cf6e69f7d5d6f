"""Sentence makers of the bundled suite: facts (who did what, where, when) and short reviews."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from . import vocab


@dataclass(frozen=True)
class Fact:
    """One event: ``name`` ``verb`` the ``adjective`` ``obj`` in ``place`` on/in ``when``."""

    name: str
    verb: tuple[str, str, str, str]  # base, 3rd singular, past, past participle
    adjective: str
    obj: str
    place: str
    when: str  # a weekday or a month

    @property
    def time(self) -> str:
        return f"{'on' if self.when in vocab.DAYS else 'in'} {self.when}"

    @property
    def fronted_time(self) -> str:
        return self.time[0].upper() + self.time[1:]

    @property
    def thing(self) -> str:
        return f"{self.adjective} {self.obj}"


def random_fact(rng: random.Random, avoid: Fact | None = None) -> Fact:
    """A fact; with ``avoid``, one whose person, object and place all differ from it."""
    while True:
        fact = Fact(
            rng.choice(vocab.NAMES),
            rng.choice(vocab.VERBS),
            rng.choice(vocab.OBJECT_ADJECTIVES),
            rng.choice(vocab.OBJECTS),
            rng.choice(vocab.PLACES),
            rng.choice(vocab.DAYS + vocab.MONTHS),
        )
        if avoid is None or (fact.name != avoid.name and fact.obj != avoid.obj and fact.place != avoid.place):
            return fact


def change_one_slot(rng: random.Random, fact: Fact, slots: tuple[str, ...]) -> Fact:
    """The same fact with one of ``slots`` replaced by a different value."""
    slot = rng.choice(slots)
    pools = {
        "name": vocab.NAMES,
        "obj": vocab.OBJECTS,
        "place": vocab.PLACES,
        "adjective": vocab.OBJECT_ADJECTIVES,
        "when": vocab.DAYS + vocab.MONTHS,
    }
    value = rng.choice([v for v in pools[slot] if v != getattr(fact, slot)])
    return replace(fact, **{slot: value})


def _active(fact: Fact, verb_phrase: str, fronted: bool) -> str:
    """``name verb_phrase the thing in place time``, the time fronted or at the end."""
    if fronted:
        return f"{fact.fronted_time}, {fact.name} {verb_phrase} the {fact.thing} in {fact.place}."
    return f"{fact.name} {verb_phrase} the {fact.thing} in {fact.place} {fact.time}."


def present(fact: Fact, fronted: bool = False) -> str:
    return _active(fact, fact.verb[1], fronted)


def past(fact: Fact, fronted: bool = False) -> str:
    return _active(fact, fact.verb[2], fronted)


def negated(fact: Fact, fronted: bool = False) -> str:
    return _active(fact, f"does not {fact.verb[0]}", fronted)


def negated_past(fact: Fact, fronted: bool = False) -> str:
    return _active(fact, f"did not {fact.verb[0]}", fronted)


def passive(fact: Fact) -> str:
    return f"The {fact.thing} was {fact.verb[3]} by {fact.name} in {fact.place} {fact.time}."


# ----------------------------------------------------------------------------- reviews
NEGATED_CLAUSE_RATE = 0.2


def review_clause(rng: random.Random, aspect: str, positive: bool) -> str:
    """One clause about ``aspect`` whose polarity is ``positive`` (sometimes through a negation)."""
    same = vocab.POSITIVE if positive else vocab.NEGATIVE
    opposite = vocab.NEGATIVE if positive else vocab.POSITIVE
    intensifier = rng.choice(vocab.INTENSIFIERS) + " " if rng.random() < 0.4 else ""
    if rng.random() < NEGATED_CLAUSE_RATE:  # polarity through a negation of the opposite adjective
        if rng.random() < 0.5:
            return f"nobody could call the {aspect} {rng.choice(opposite)}"
        return f"the {aspect} was not {rng.choice(opposite)}" + (" at all" if rng.random() < 0.5 else "")
    form = rng.randrange(3)
    if form == 0:
        return f"the {aspect} was {intensifier}{rng.choice(same)}"
    if form == 1:
        return f"I found the {aspect} {intensifier}{rng.choice(same)}"
    return f"the {aspect} felt {intensifier}{rng.choice(same)}"


def review(rng: random.Random, polarities: list[bool]) -> tuple[str, list[str]]:
    """A short review with one clause per polarity; returns the text and the aspects in order."""
    domain = rng.choice(sorted(vocab.DOMAINS))
    aspects = rng.sample(vocab.DOMAINS[domain], len(polarities))
    clauses = [review_clause(rng, a, p) for a, p in zip(aspects, polarities)]
    joiner = " and " if len(set(polarities)) == 1 else " but "
    body = rng.choice(vocab.REVIEW_OPENERS) + joiner.join(clauses)
    body = body[0].upper() + body[1:] + "."
    if rng.random() < 0.5:
        body = f"About the {vocab.DOMAIN_NOUNS[domain]}: {body}"
    return body, aspects


def headline(rng: random.Random, topic: str) -> str:
    """A headline about ``topic``; half of them borrow one slot from another topic (the majority decides)."""
    slots = [part.split("|") for part in vocab.TOPICS[topic]]
    if rng.random() < 0.5:
        other = rng.choice([t for t in sorted(vocab.TOPICS) if t != topic])
        index = rng.randrange(3)
        slots[index] = vocab.TOPICS[other][index].split("|")
    subject, obj, verb = (rng.choice(s) for s in slots)
    text = f"{subject} {verb} {obj} {rng.choice(vocab.TOPIC_TIMES)}."
    if rng.random() < 0.4:
        text = f"In {rng.choice(vocab.PLACES)}, {text}"
    return text[0].upper() + text[1:]
