"""The confirmation suite: 12 tasks over 3 task types, generated offline from a seed, never used to choose a
setting (choose on the bundled suite, confirm here)."""

from ..spec import SuiteSpec
from .tasks import CONFIRM_CONFLICTS, CONFIRM_HELPS, CONFIRM_TASKS

CONFIRM = SuiteSpec(
    name="confirm",
    tasks=CONFIRM_TASKS,
    conflicts=CONFIRM_CONFLICTS,
    helps=CONFIRM_HELPS,
    version=1,
    card_title="The confirmation suite (`mta.data.suite.name: confirm`)",
    card_intro=[
        "Written apart from the bundled suite (its own generators, templates and words) to confirm settings "
        "chosen on the bundled suite: nothing is tuned on it. Inputs start with short task prefixes "
        "(`mood:`, `code a:`) instead of instructions."
    ],
    card_conflict_note=(
        "Each pair reads the same kind of text, so one shared model must tell its tasks apart from "
        "the prefix alone. The word maps and the two item orderings are lookups to memorise: with "
        "three maps over one vocabulary and two orders over one item list, a small model runs short "
        "of capacity, so these tasks stay below their ceiling at convergence."
    ),
    card_vocabulary=(
        "12 diary subjects, 24 mood adjectives, 14 occasions, 36 creatures in 3 habitats, 20 weather cues "
        "and 20 towns, 40 items with a size and a price order, 10 colours, and 46 code words in 4 "
        "classes (`mta_moe/data/suite/confirm/vocab.py`); no content word of the bundled suite."
    ),
    module="mta_moe/data/suite/confirm/tasks.py",
)
