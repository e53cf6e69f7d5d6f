"""Word banks of the confirmation suite; none of its content words is a word of the bundled suite's banks."""

import random

# diary lines (mood, contrary, tone)
SUBJECTS = [
    "I",
    "We",
    "My brother",
    "The twins",
    "Our neighbour",
    "The skipper",
    "Grandpa",
    "The new intern",
    "My aunt",
    "The whole crew",
    "Our teacher",
    "The ward nurse",
]
GLAD = """cheerful hopeful calm proud relieved content thrilled grateful joyful relaxed eager merry""".split()
GLOOMY = """anxious lonely gloomy furious miserable exhausted homesick nervous bitter restless grumpy weary""".split()
HEDGES = ["", "a bit ", "deeply ", "oddly ", "so ", "fairly ", "hugely ", "mildly "]
OCCASIONS = [
    "after the storm",
    "at the quay",
    "during the exam",
    "on the long voyage",
    "at the wedding",
    "before the hearing",
    "after the long hike",
    "at the village dance",
    "during the blackout",
    "on the barge",
    "after the interview",
    "at the reunion",
    "in the waiting hall",
    "at the bazaar",
]
SARCASM = ["Yeah, right.", "Sure, sure.", "As if.", "Such joy, eh."]

# habitat: creature -> land | water | air
CREATURES = {
    "land": "fox badger lynx hedgehog mole bison yak ibex hare boar moose lizard".split(),
    "water": "trout eel carp squid octopus walrus shrimp jellyfish herring lobster salmon manatee".split(),
    "air": "swift falcon owl hawk sparrow kestrel albatross condor bat swallow moth crane".split(),
}
CREATURE_ACTS = [
    "was seen",
    "was spotted at dawn",
    "rested",
    "appeared again",
    "was counted",
    "was heard",
    "was recorded",
    "was tagged",
]
CREATURE_PLACES = [
    "near the river",
    "by the old mill",
    "beyond the dunes",
    "close to the cliffs",
    "over the marsh",
    "in the reserve",
    "along the canal",
    "below the ridge",
    "near the pier",
    "by the quarry road",
]

# sky: label -> cues; towns for the reports
SKY = {
    "sunny": ["bright glare", "clear skies", "dry heat", "long shadows", "warm stones"],
    "rainy": ["puddles", "drizzle", "wet pavements", "cold showers", "dripping gutters"],
    "snowy": ["frost", "sleet", "deep drifts", "icy roads", "frozen ponds"],
    "windy": ["gusts", "bending trees", "flying leaves", "rattling shutters", "slammed doors"],
}
TOWNS = """Ashford Brindle Corran Dunmere Elstow Farrow Glenby Hollin Ivesby Jarrow Kelmarsh Lunt Morwick Nantle
Oxley Pendle Quarrel Rillby Stave Thorne""".split()

# items compared by size (larger) and by price (costlier); the list is in size order, smallest first
ITEMS = """pea bead button marble coin ring key thimble spoon pencil whistle candle cup bottle brush shoe plate
loaf pillow pumpkin tyre crate barrel door bathtub fridge bed cart tractor car van truck bus barn house yacht
lighthouse ship church castle""".split()
SIZE_RANK = {item: rank for rank, item in enumerate(ITEMS)}
# prices are a fixed shuffle of the size order: the two orders agree on about half the pairs
_PRICE_ORDER = list(ITEMS)
random.Random("mta-confirm-prices").shuffle(_PRICE_ORDER)
PRICE_RANK = {item: rank for rank, item in enumerate(_PRICE_ORDER)}

COLOURS = "crimson teal ochre violet ivory coral navy olive scarlet jade".split()

# code a / b / c: word-for-word substitutions within each word class; "the" is kept
CODE_CLASSES = {
    "adjective": "brisk hollow silent crooked gentle dusty narrow gilded muddy frozen lanky humble".split(),
    "noun": "miller baker raven goblet meadow cellar wagon pony weaver orchard anvil cottage quarry beacon kitten "
    "tailor".split(),
    "verb": "guards scolds follows nudges watches mends praises pulls greets fears tickles chases".split(),
    "preposition": "near behind under beside past above".split(),
}


def _derangement(words: list[str], rng: random.Random) -> dict[str, str]:
    """A permutation of ``words`` that moves every word."""
    while True:
        shuffled = list(words)
        rng.shuffle(shuffled)
        if all(a != b for a, b in zip(words, shuffled)):
            return dict(zip(words, shuffled))


def _code_maps() -> dict[str, dict[str, str]]:
    """Three word maps: ``b`` agrees with ``a`` on a third of each class (the first third of a fixed shuffle) and
    differs on the rest; ``c`` is drawn on its own."""
    maps: dict[str, dict[str, str]] = {"a": {}, "b": {}, "c": {}}
    for name, words in CODE_CLASSES.items():
        rng = random.Random(f"mta-confirm-code:{name}")
        a = _derangement(words, rng)
        order = list(words)
        rng.shuffle(order)
        kept = set(order[: len(order) // 3])
        while True:  # b: a's image on the kept third, another image elsewhere
            rest = [w for w in words if w not in kept]
            images = [a[w] for w in rest]
            rng.shuffle(images)
            b = {**{w: a[w] for w in kept}, **dict(zip(rest, images))}
            if all(b[w] != a[w] and b[w] != w for w in rest):
                break
        maps["a"].update(a)
        maps["b"].update(b)
        maps["c"].update(_derangement(words, rng))
    return maps


CODE_MAPS = _code_maps()
