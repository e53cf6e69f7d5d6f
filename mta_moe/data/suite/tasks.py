"""The tasks of the bundled suite: what each asks, its type, labels, metric, and how it relates to the others."""

from __future__ import annotations

import random

from . import sentences as s
from . import vocab
from .spec import SuiteSpec, SuiteTask


def _pick(rng: random.Random, options: list[str]) -> str:
    return rng.choice(options)


def _with_distractor(rng: random.Random, fact: s.Fact, distractor_rate: float) -> str:
    """``fact`` in the past tense (time fronted 30 % of the time), sometimes next to an unrelated event."""
    text = s.past(fact, fronted=rng.random() < 0.3)
    if rng.random() < distractor_rate:
        other = s.past(s.random_fact(rng, avoid=fact))
        text = f"{text} {other}" if rng.random() < 0.5 else f"{other} {text}"
    return text


def sentiment(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(["positive", "negative"])
    text, _ = s.review(rng, [label == "positive"] * rng.choice([1, 2]))
    ask = _pick(
        rng,
        [
            "Is this review positive or negative?",
            "Sentiment of the review, positive or negative?",
            "Does the customer sound positive or negative?",
        ],
    )
    return f"{ask} Review: {text}", label


def irony(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(["positive", "negative"])
    text, _ = s.review(rng, [label != "positive"] * rng.choice([1, 2]))  # the surface says the opposite
    ask = _pick(
        rng,
        [
            "This review is sarcastic. Is the writer's real opinion positive or negative?",
            "Read the ironic review. Is what the writer means positive or negative?",
        ],
    )
    return f"{ask} Review: {text}", label


def topic(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(sorted(vocab.TOPICS))
    ask = _pick(
        rng,
        [
            "What is the topic of this headline: sports, science, business, travel or food?",
            "Headline topic (sports, science, business, travel, food)?",
        ],
    )
    return f"{ask} Headline: {s.headline(rng, label)}", label


def review_claim(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(["yes", "no"])
    polarities = [rng.random() < 0.5]
    text, aspects = s.review(rng, polarities)
    index = 0
    liked = polarities[index] == (label == "yes")
    claim = f"The writer {'liked' if liked else 'disliked'} the {aspects[index]}."
    return f"Premise: {text} Hypothesis: {claim} Does the premise support the hypothesis, yes or no?", label


def fact_entail(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(["yes", "no", "maybe"])
    fact = s.random_fact(rng)
    premise = _with_distractor(rng, fact, distractor_rate=0.5)
    form = rng.randrange(3)
    if label == "no":
        fact = s.change_one_slot(rng, fact, (("name", "obj"), ("name", "place", "when"), ("name", "obj"))[form])
    if label == "maybe":
        hypothesis = _pick(
            rng,
            [
                f"{fact.name} {fact.verb[2]} the {fact.obj} for a friend.",
                f"{fact.name} was happy with the {fact.obj}.",
                f"{fact.name} {fact.verb[2]} the {fact.obj} before lunch.",
                f"{fact.name} paid a lot for the {fact.obj}.",
                f"{fact.name} lives in {fact.place}.",
            ],
        )
    else:
        hypothesis = (
            f"{fact.name} {fact.verb[2]} the {fact.obj}.",
            f"{fact.name} was in {fact.place} {fact.time}.",
            f"The {fact.obj} was {fact.verb[3]} by {fact.name}.",
        )[form]
    return (
        f"Premise: {premise} Hypothesis: {hypothesis} Does the premise entail the hypothesis? Answer yes, no or maybe."
    ), label


def same_meaning(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(["yes", "no"])
    fact = s.random_fact(rng)
    first = s.past(fact)
    if label == "no" and rng.random() < 0.5:  # the paraphrase negated: "did not"
        second = s.negated_past(fact, fronted=rng.random() < 0.5)
    else:  # a paraphrase, of the same fact or of one with one slot changed
        other = fact if label == "yes" else s.change_one_slot(rng, fact, ("name", "obj", "place"))
        second = s.passive(other) if rng.random() < 0.5 else s.past(other, fronted=True)
    if rng.random() < 0.5:
        first, second = second, first
    return f"Sentence 1: {first} Sentence 2: {second} Do the two sentences mean the same thing, yes or no?", label


def answer(rng: random.Random) -> tuple[str, str]:
    fact = s.random_fact(rng)
    text = _with_distractor(rng, fact, distractor_rate=0.6)
    kind = rng.randrange(4)
    question, target = (
        (f"Who {fact.verb[2]} the {fact.thing}?", fact.name),
        (f"Where did {fact.name} {fact.verb[0]} the {fact.thing}?", fact.place),
        (f"When did {fact.name} {fact.verb[0]} the {fact.thing}?", fact.when),
        (f"What did {fact.name} {fact.verb[0]} in {fact.place}?", f"the {fact.thing}"),
    )[kind]
    return f"Answer from the text. Question: {question} Text: {text}", target


def past_tense(rng: random.Random) -> tuple[str, str]:
    fact, fronted = s.random_fact(rng), rng.random() < 0.3
    return f"Rewrite in the past tense: {s.present(fact, fronted)}", s.past(fact, fronted)


def negate(rng: random.Random) -> tuple[str, str]:
    fact, fronted = s.random_fact(rng), rng.random() < 0.3
    return f"Rewrite as a negative sentence: {s.present(fact, fronted)}", s.negated(fact, fronted)


SUITE_TASKS: dict[str, SuiteTask] = {
    t.name: t
    for t in [
        SuiteTask(
            "sentiment",
            "classify",
            "accuracy",
            ("positive", "negative"),
            "Polarity of a one- or two-clause review of a restaurant, hotel, phone, film or book; "
            'some clauses carry the polarity through a negation ("was not bland").',
            sentiment,
        ),
        SuiteTask(
            "irony",
            "classify",
            "accuracy",
            ("positive", "negative"),
            "The same kind of review, declared sarcastic: the label is the opposite of the surface polarity.",
            irony,
        ),
        SuiteTask(
            "topic",
            "classify",
            "accuracy",
            ("sports", "science", "business", "travel", "food"),
            "Topic of a headline built from a subject, verb and object; in half of them one of the three "
            "comes from another topic, and the majority decides.",
            topic,
        ),
        SuiteTask(
            "review_claim",
            "nli",
            "accuracy",
            ("yes", "no"),
            "Premise: a one-clause review of one aspect; hypothesis: the writer liked or disliked that "
            "aspect. Does the premise support it? (The label is the polarity read through the claim.)",
            review_claim,
        ),
        SuiteTask(
            "fact_entail",
            "nli",
            "accuracy",
            ("yes", "no", "maybe"),
            "Premise: one or two event sentences; hypothesis: a restatement (yes), a restatement with one "
            "slot changed (no), or a claim the text does not settle (maybe).",
            fact_entail,
        ),
        SuiteTask(
            "same_meaning",
            "nli",
            "accuracy",
            ("yes", "no"),
            "Paraphrase detection: an event sentence and its passive or time-fronted paraphrase (yes); "
            "the paraphrase with one slot changed (person, object or place) or negated (no).",
            same_meaning,
        ),
        SuiteTask(
            "answer",
            "generate",
            "exact_match",
            None,
            "Extractive question answering (who / where / when / what) over one or two event sentences.",
            answer,
        ),
        SuiteTask(
            "past_tense",
            "generate",
            "rouge_l",
            None,
            "Rewrite a present-tense event sentence in the past tense.",
            past_tense,
        ),
        SuiteTask(
            "negate",
            "generate",
            "rouge_l",
            None,
            'Rewrite the same kind of present-tense sentence as its negation ("does not ...").',
            negate,
        ),
    ]
}

# Pairs and why; the data card prints these.
CONFLICTS = [
    ("sentiment", "irony", "same review distribution, opposite labelling rule: only the instruction tells them apart"),
    ("review_claim", "irony", "review_claim follows the surface polarity that irony must invert"),
    ("past_tense", "negate", "identical input sentences, two different rewrites of the same verb"),
]
HELPS = [
    ("sentiment", "review_claim", "the same polarity knowledge (adjectives, negation) in two formats"),
    ("fact_entail", "same_meaning", "both compare the slots (who, what, where, when) of two event descriptions"),
    ("fact_entail", "answer", "both locate a slot of an event sentence, with a distractor sentence"),
]

BUNDLED = SuiteSpec(
    name="bundled",
    tasks=SUITE_TASKS,
    conflicts=CONFLICTS,
    helps=HELPS,
    version=3,
    card_title="The bundled task suite",
    card_conflict_note=(
        "A single shared model must tell each conflicting pair apart from the instruction alone. "
        "Under `gate_mode: task` the routing key is the task type, so the cross-type pair "
        "(`irony` / `review_claim`) starts on different adapters while the within-type pairs "
        "(`sentiment` / `irony`, `past_tense` / `negate`) share theirs; giving a task its own entry in "
        "`mta.task_types` (and its rows that `type`) separates those too."
    ),
    card_vocabulary=(
        "Names, cities, weekdays and months, 40 verbs with their inflections, 58 objects, 32 object "
        "adjectives, 5 review domains with their aspects, 16 positive and 16 negative adjectives, "
        "10 intensifiers and 5 headline topics: about 550 distinct words "
        "(`mta_moe/data/suite/vocab.py`)."
    ),
    module="mta_moe/data/suite/tasks.py",
)
