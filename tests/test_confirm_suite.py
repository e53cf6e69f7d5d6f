"""The confirmation suite: its own tasks and words, short prefixes, crossing pairs whose labels follow their
rules, deterministic disjoint splits, and the data pipeline's `suite.name` key."""

import collections
import re

import pytest

from mta_moe.config import ConfigError
from mta_moe.data import DataConfig, load_task_data
from mta_moe.data.suite import SPLITS, SUITES, SuiteSizes, build_suite, write_suite
from mta_moe.data.suite.confirm import vocab as v

SMALL = SuiteSizes(train=200, validation=40, test=60)
TASKS = SUITES["confirm"].tasks


@pytest.fixture(scope="module")
def rows():
    return build_suite(seed=3, sizes=SMALL, suite="confirm")


def test_shape_types_and_short_prefixes(rows):
    assert 10 <= len(TASKS) <= 14 and {t.type for t in TASKS.values()} == {"classify", "nli", "generate"}
    for split in SPLITS:
        assert collections.Counter(r["task"] for r in rows[split]) == {n: getattr(SMALL, split) for n in TASKS}
    for name in TASKS:
        prefixes = {r["input"].split(":")[0] for r in rows["train"] if r["task"] == name}
        assert len(prefixes) == 1 and len(prefixes.pop().split()) <= 2  # one short prefix per task


def test_deterministic_and_disjoint(rows):
    assert build_suite(seed=3, sizes=SMALL, suite="confirm") == rows
    assert build_suite(seed=4, sizes=SMALL, suite="confirm") != rows
    for name in TASKS:
        inputs = [{r["input"] for r in rows[s] if r["task"] == name} for s in SPLITS]
        assert sum(map(len, inputs)) == SMALL.train + SMALL.validation + SMALL.test
        assert not (inputs[0] & inputs[1] or inputs[0] & inputs[2] or inputs[1] & inputs[2])


def test_other_words_than_the_bundled_suite(rows):
    bundled = build_suite(seed=3, sizes=SMALL)

    def words(split):
        return {w for r in split for w in re.findall(r"[a-z]+", r["input"].lower()) if len(w) > 3}

    shared = words(rows["train"]) & words(bundled["train"])
    assert shared <= {"after", "again", "before", "felt", "over", "past", "what"}, sorted(shared)  # function words


def _mood(line: str) -> str:
    words = set(re.findall(r"[a-z]+", line.lower()))
    glad = bool(words & set(v.GLAD))
    assert glad != bool(words & set(v.GLOOMY)), line
    return "glad" if glad != ("not" in words) else "gloomy"


def test_the_crossing_pairs_follow_their_rules(rows):
    flips = collections.Counter()
    for row in rows["train"] + rows["test"]:
        task, text, target = row["task"], row["input"].split(": ", 1)[1], row["target"]
        if task in ("mood", "contrary", "tone"):
            marked = any(text.endswith(m) for m in v.SARCASM)
            assert not marked or task == "tone"
            flipped = task == "contrary" or marked
            assert (target != _mood(text)) == flipped, row
            flips[task] += flipped
        elif task in ("larger", "costlier"):
            first, second = text.split(" | ")
            rank = v.SIZE_RANK if task == "larger" else v.PRICE_RANK
            assert (target == "yes") == (rank[first] > rank[second]), row
        elif task.startswith("code_"):
            table = v.CODE_MAPS[task[-1]]
            assert target == " ".join(table.get(w, w) for w in text.split()), row
        elif task == "colour":
            item, listing = text.split("? ")
            assert f"{target} {item}" in listing.split(", "), row
        elif task == "habitat":
            creature = text.split()[1]
            assert creature in v.CREATURES[target], row
        elif task == "contains":
            items, probe = text.split(" | ")
            assert (target == "yes") == (probe in items.split(", ")), row
    assert 0.4 < flips["tone"] / (SMALL.train + SMALL.test) < 0.6  # the marker flips about half the rows
    sizes, prices = v.SIZE_RANK, v.PRICE_RANK
    pairs = [(a, b) for a in v.ITEMS for b in v.ITEMS if a != b]
    disagree = sum((sizes[a] > sizes[b]) != (prices[a] > prices[b]) for a, b in pairs) / len(pairs)
    assert 0.4 < disagree < 0.7
    agree = sum(v.CODE_MAPS["a"][w] == v.CODE_MAPS["b"][w] for w in v.CODE_MAPS["a"]) / len(v.CODE_MAPS["a"])
    assert 0.25 < agree < 0.4 and all(v.CODE_MAPS[m][w] != w for m in "abc" for w in v.CODE_MAPS[m])
    assert len(SUITES["confirm"].conflicts) >= 3


def test_the_data_pipeline_takes_the_suite_by_name(tmp_path):
    cfg = DataConfig.from_dict({"suite": {"name": "confirm", "seed": 3, "train": 20, "validation": 5, "test": 5}})
    data = load_task_data(cfg, ["classify", "nli", "generate"], tmp_path)
    assert sorted(data.registry.names) == sorted(TASKS)
    assert data.splits["test"].to_list() == build_suite(3, SuiteSizes(20, 5, 5), suite="confirm")["test"]
    paths = write_suite(tmp_path / "w", seed=3, sizes=SuiteSizes(20, 5, 5), suite="confirm")
    assert '"name": "confirm"' in paths["manifest"].read_text()
    with pytest.raises(ConfigError, match=r"mta.data.suite.name: must be one of \['bundled', 'confirm'\]"):
        DataConfig.from_dict({"suite": {"name": "glue"}})
    with pytest.raises(ConfigError, match=r"mta.data.suite.tasks: unknown task 'sentiment'; the confirm suite"):
        DataConfig.from_dict({"suite": {"name": "confirm", "tasks": ["sentiment"]}})
