"""Word banks of the bundled task suite (several hundred words; each list is a slot filler)."""

NAMES = """Anna Maria Tom Lucas Sofia Omar Priya Kenji Elena Daniel Fatima Jonas Chloe Mateo Aisha Victor
Hannah Ravi Ingrid Pablo Nora Samuel Leila Felix Grace Tariq Yuki Oscar Amara Henrik Lucia Diego Mei
Arthur Zara Ivan Clara Kofi Beatrice Hugo""".split()

PLACES = """Lisbon Oslo Cairo Lima Dublin Nairobi Kyoto Porto Vienna Seville Bergen Quito Tunis Krakow Hanoi
Bristol Geneva Malaga Riga Tallinn Accra Lyon Naples Bruges Halifax Denver Perth Tbilisi Valencia Glasgow
Marseille Bologna Leeds Ghent Izmir Cusco Dakar Lagos Turin Zagreb""".split()

DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = "January February March April May June July August September October November December".split()

# (base, third person singular, past, past participle)
VERBS = [
    ("buy", "buys", "bought", "bought"),
    ("paint", "paints", "painted", "painted"),
    ("repair", "repairs", "repaired", "repaired"),
    ("sell", "sells", "sold", "sold"),
    ("borrow", "borrows", "borrowed", "borrowed"),
    ("find", "finds", "found", "found"),
    ("carry", "carries", "carried", "carried"),
    ("clean", "cleans", "cleaned", "cleaned"),
    ("order", "orders", "ordered", "ordered"),
    ("build", "builds", "built", "built"),
    ("wash", "washes", "washed", "washed"),
    ("deliver", "delivers", "delivered", "delivered"),
    ("return", "returns", "returned", "returned"),
    ("pack", "packs", "packed", "packed"),
    ("hide", "hides", "hid", "hidden"),
    ("choose", "chooses", "chose", "chosen"),
    ("draw", "draws", "drew", "drawn"),
    ("fix", "fixes", "fixed", "fixed"),
    ("move", "moves", "moved", "moved"),
    ("polish", "polishes", "polished", "polished"),
    ("measure", "measures", "measured", "measured"),
    ("inspect", "inspects", "inspected", "inspected"),
    ("lose", "loses", "lost", "lost"),
    ("keep", "keeps", "kept", "kept"),
    ("bring", "brings", "brought", "brought"),
    ("send", "sends", "sent", "sent"),
    ("rent", "rents", "rented", "rented"),
    ("wrap", "wraps", "wrapped", "wrapped"),
    ("break", "breaks", "broke", "broken"),
    ("sketch", "sketches", "sketched", "sketched"),
    ("collect", "collects", "collected", "collected"),
    ("donate", "donates", "donated", "donated"),
    ("photograph", "photographs", "photographed", "photographed"),
    ("steal", "steals", "stole", "stolen"),
    ("weigh", "weighs", "weighed", "weighed"),
    ("sew", "sews", "sewed", "sewn"),
    ("test", "tests", "tested", "tested"),
    ("lift", "lifts", "lifted", "lifted"),
    ("paint over", "paints over", "painted over", "painted over"),
    ("give away", "gives away", "gave away", "given away"),
]

OBJECTS = """lamp bicycle kettle chair umbrella guitar suitcase mirror clock table blanket camera teapot
bookshelf jacket scarf radio piano vase basket ladder wallet notebook backpack painting sofa cabinet helmet
tent kite lantern violin desk rug bench boat canoe sculpture map typewriter bucket hammer drum trumpet
wardrobe stool fence gate mailbox birdhouse toolbox hat coat sewing-machine skateboard wheelbarrow
armchair bracelet""".split()

OBJECT_ADJECTIVES = """red blue green yellow old new small large wooden heavy antique shiny striped folding
metal silver golden tiny huge rusty modern plastic leather woollen vintage orange purple white black brown
grey""".split()

# reviews: domain -> aspects
DOMAINS = {
    "restaurant": "soup service staff dessert bread portions menu coffee terrace waiter pasta salad".split(),
    "hotel": "room bed breakfast pool lobby view shower reception balcony towels wifi lift".split(),
    "phone": "battery screen camera charger speaker case keyboard microphone software display".split(),
    "film": "plot acting soundtrack ending dialogue cast script pacing costumes photography".split(),
    "book": "story characters prose cover chapters translation plot twist narrator illustrations".split(),
}
DOMAIN_NOUNS = {"restaurant": "restaurant", "hotel": "hotel", "phone": "phone", "film": "film", "book": "book"}

# 16 adjectives per polarity: few enough that a small model trained from scratch learns them in a
# 9-task mixture within the demo budget
POSITIVE = """wonderful excellent delightful superb lovely charming reliable generous brilliant pleasant
spotless fresh gripping elegant friendly comfortable""".split()
NEGATIVE = """awful dreadful bland broken rude dirty noisy boring flimsy stale sluggish cramped dull clumsy
greasy shabby""".split()
INTENSIFIERS = "really truly quite rather absolutely surprisingly remarkably very genuinely utterly".split()
REVIEW_OPENERS = [
    "",
    "Honestly, ",
    "I have to say ",
    "In short, ",
    "To be fair, ",
    "After two visits, ",
    "As expected, ",
    "Frankly, ",
    "Overall, ",
    "My verdict: ",
    "Well, ",
    "For the price, ",
]

# topic classification: label -> (subjects, objects, verbs)
TOPICS = {
    "sports": (
        "the striker|the coach|the home team|the referee|the captain|the goalkeeper|the league|the cyclists",
        "the final|a penalty|the championship|the season|a medal|the title|the tournament|the match",
        "won|lost|secured|missed|celebrated|dominated|reached|defended",
    ),
    "science": (
        "researchers|the laboratory|astronomers|the biologists|a chemist|the physicists|engineers"
        "|the team of geologists",
        "a new fossil|the molecule|a distant galaxy|the vaccine trial|a gene|the experiment|an ancient comet"
        "|the climate model",
        "discovered|measured|published|observed|analysed|sequenced|confirmed|simulated",
    ),
    "business": (
        "investors|the bank|the startup|shareholders|the retailer|the board|analysts|the airline group",
        "record profits|the merger|quarterly earnings|new shares|the takeover|its market share|a loan|the budget",
        "announced|reported|approved|cut|raised|doubled|rejected|forecast",
    ),
    "travel": (
        "tourists|backpackers|the ferry company|the new hostel|pilgrims|the tour guide|cruise passengers|the museum",
        "cheap flights|the coastal trail|a night train|the old harbour|visa rules|the ski resort|a walking tour"
        "|the beaches",
        "explored|booked|reopened|recommended|crowded|visited|mapped|promoted",
    ),
    "food": (
        "the chef|bakers|the vineyard|a street vendor|the cheesemaker|farmers|the cafe|food critics",
        "a new recipe|the harvest|sourdough bread|the tasting menu|spicy noodles|aged cheese|fresh oysters"
        "|a vegan dessert",
        "cooked|praised|served|baked|tasted|grew|invented|sold",
    ),
}
TOPIC_TIMES = [
    "this week",
    "on Sunday",
    "last night",
    "after months of work",
    "for the first time",
    "again",
    "despite the weather",
    "ahead of the holidays",
    "earlier today",
    "in the spring",
]
