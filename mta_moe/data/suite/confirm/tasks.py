"""The confirmation suite's tasks: short T5-style prefixes, four pairs that read the same surface text under
crossing rules, and tasks that stay hard for a small model at convergence (three word maps over one vocabulary,
two orderings of one item list). Written apart from the bundled suite: other tasks, templates and words."""

from __future__ import annotations

import random

from ..spec import SuiteTask
from . import vocab as v

GLAD, GLOOMY = "glad", "gloomy"


def _diary(rng: random.Random, glad: bool) -> str:
    """A diary line whose mood is ``glad``; a quarter of them carry it through a negated adjective."""
    negated = rng.random() < 0.25
    adjective = rng.choice(v.GLOOMY if glad == negated else v.GLAD)
    subject = rng.choice(v.SUBJECTS)
    verb = rng.choice(["felt", "seemed", "looked"] + (["was"] if subject not in ("We", "The twins") else ["were"]))
    hedge = "" if negated else rng.choice(v.HEDGES)
    return f"{subject} {verb} {'not ' if negated else ''}{hedge}{adjective} {rng.choice(v.OCCASIONS)}."


def mood(rng: random.Random) -> tuple[str, str]:
    glad = rng.random() < 0.5
    return f"mood: {_diary(rng, glad)}", GLAD if glad else GLOOMY


def contrary(rng: random.Random) -> tuple[str, str]:
    glad = rng.random() < 0.5  # the mood of the line; the label is its opposite
    return f"contrary: {_diary(rng, glad)}", GLOOMY if glad else GLAD


def tone(rng: random.Random) -> tuple[str, str]:
    glad, sarcastic = rng.random() < 0.5, rng.random() < 0.5
    line = _diary(rng, glad)
    if sarcastic:  # the marker turns the line into its opposite
        line, glad = f"{line} {rng.choice(v.SARCASM)}", not glad
    return f"tone: {line}", GLAD if glad else GLOOMY


def habitat(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(sorted(v.CREATURES))
    creature = rng.choice(v.CREATURES[label])
    return f"habitat: The {creature} {rng.choice(v.CREATURE_ACTS)} {rng.choice(v.CREATURE_PLACES)}.", label


def sky(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(sorted(v.SKY))
    cues = rng.sample(v.SKY[label], 2)
    third = rng.choice(
        v.SKY[rng.choice([k for k in v.SKY if k != label])]
        if rng.random() < 0.6
        else [c for c in v.SKY[label] if c not in cues]
    )
    cues.append(third)
    rng.shuffle(cues)
    return f"sky: {cues[0]}, {cues[1]} and {cues[2]} in {rng.choice(v.TOWNS)}", label


def _item_pair(rng: random.Random) -> tuple[str, str]:
    first, second = rng.sample(v.ITEMS, 2)
    return first, second


def larger(rng: random.Random) -> tuple[str, str]:
    first, second = _item_pair(rng)
    return f"larger: {first} | {second}", "yes" if v.SIZE_RANK[first] > v.SIZE_RANK[second] else "no"


def costlier(rng: random.Random) -> tuple[str, str]:
    first, second = _item_pair(rng)
    return f"costlier: {first} | {second}", "yes" if v.PRICE_RANK[first] > v.PRICE_RANK[second] else "no"


def contains(rng: random.Random) -> tuple[str, str]:
    items = rng.sample(v.ITEMS, rng.randint(3, 5))
    inside = rng.random() < 0.5
    probe = rng.choice(items) if inside else rng.choice([i for i in v.ITEMS if i not in items])
    return f"contains: {', '.join(items)} | {probe}", "yes" if inside else "no"


def _phrase(rng: random.Random) -> list[str]:
    c = v.CODE_CLASSES
    words = ["the", rng.choice(c["adjective"]), rng.choice(c["noun"]), rng.choice(c["verb"]), "the"]
    if rng.random() < 0.5:
        words.append(rng.choice(c["adjective"]))
    words.append(rng.choice(c["noun"]))
    if rng.random() < 0.5:
        words += [rng.choice(c["preposition"]), "the", rng.choice(c["noun"])]
    return words


def _coder(name: str):
    table = v.CODE_MAPS[name]

    def code(rng: random.Random) -> tuple[str, str]:
        words = _phrase(rng)
        return f"code {name}: {' '.join(words)}", " ".join(table.get(w, w) for w in words)

    return code


def colour(rng: random.Random) -> tuple[str, str]:
    items = rng.sample(v.ITEMS, rng.randint(3, 4))
    paints = rng.sample(v.COLOURS, len(items))
    target = rng.randrange(len(items))
    listing = ", ".join(f"{p} {i}" for p, i in zip(paints, items))
    return f"colour: {items[target]}? {listing}", paints[target]


CONFIRM_TASKS: dict[str, SuiteTask] = {
    t.name: t
    for t in [
        SuiteTask(
            "mood",
            "classify",
            "accuracy",
            (GLAD, GLOOMY),
            'Mood of a diary line (12 glad and 12 gloomy adjectives; a quarter negated: "not hopeful").',
            mood,
        ),
        SuiteTask(
            "contrary",
            "classify",
            "accuracy",
            (GLAD, GLOOMY),
            "The same diary lines; the label is the opposite of the mood.",
            contrary,
        ),
        SuiteTask(
            "tone",
            "classify",
            "accuracy",
            (GLAD, GLOOMY),
            'The same diary lines; half end with a sarcasm marker ("Yeah, right."), which flips the mood.',
            tone,
        ),
        SuiteTask(
            "habitat",
            "classify",
            "accuracy",
            ("air", "land", "water"),
            "Where a named creature lives (36 creatures to remember); the place in the line is no clue.",
            habitat,
        ),
        SuiteTask(
            "sky",
            "classify",
            "accuracy",
            ("rainy", "snowy", "sunny", "windy"),
            "Weather of a report with three cues; in 60 % of them one cue belongs to other weather, and the "
            "majority decides.",
            sky,
        ),
        SuiteTask(
            "larger",
            "nli",
            "accuracy",
            ("yes", "no"),
            "Is the first of two items (40 in all) larger than the second?",
            larger,
        ),
        SuiteTask(
            "costlier",
            "nli",
            "accuracy",
            ("yes", "no"),
            "The same item pairs: is the first costlier? (prices follow a fixed list, not size)",
            costlier,
        ),
        SuiteTask(
            "contains", "nli", "accuracy", ("yes", "no"), "Does a list of 3–5 items contain the probe item?", contains
        ),
        SuiteTask(
            "code_a",
            "generate",
            "rouge_l",
            None,
            "Rewrite a 6–10 word phrase word for word through word map a (46 words, each to another of its class).",
            _coder("a"),
        ),
        SuiteTask(
            "code_b",
            "generate",
            "rouge_l",
            None,
            "The same phrases through map b, which agrees with map a on a third of the words.",
            _coder("b"),
        ),
        SuiteTask(
            "code_c", "generate", "rouge_l", None, "The same phrases through map c, drawn on its own.", _coder("c")
        ),
        SuiteTask(
            "colour",
            "generate",
            "exact_match",
            None,
            "Extraction: the colour given to the named item in a list of 3–4 coloured items.",
            colour,
        ),
    ]
}

CONFIRM_CONFLICTS = [
    ("mood", "contrary", "the same diary lines under opposite labelling rules: an exact label flip"),
    ("mood", "tone", "the same diary lines; tone flips the label only where a sarcasm marker ends the line"),
    ("larger", "costlier", "the same item pairs under two orderings that disagree on 58 % of the pairs"),
    ("code_a", "code_b", "the same phrases under two word maps that agree on a third of the words"),
]
CONFIRM_HELPS = [
    ("larger", "contains", "the same item vocabulary"),
    ("code_a", "code_c", "the same phrases and the same copying of structure under another map"),
]
