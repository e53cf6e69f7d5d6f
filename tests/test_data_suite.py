"""The bundled suite: deterministic, disjoint splits, varied text, labels that follow their rules."""

import collections
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mta_moe.data import load_examples
from mta_moe.data.suite import SPLITS, SUITE_TASKS, SuiteSizes, build_suite, data_card, vocab, write_suite

ROOT = Path(__file__).resolve().parents[1]
SMALL = SuiteSizes(train=200, validation=40, test=60)


@pytest.fixture(scope="module")
def suite():
    return build_suite(seed=3, sizes=SMALL)


def test_shape_of_the_suite(suite):
    assert len(SUITE_TASKS) >= 8
    assert {t.type for t in SUITE_TASKS.values()} == {"classify", "nli", "generate"}
    for split in SPLITS:
        counts = collections.Counter(r["task"] for r in suite[split])
        assert counts == {name: getattr(SMALL, split) for name in SUITE_TASKS}
        assert all(r["type"] == SUITE_TASKS[r["task"]].type for r in suite[split])


def test_deterministic_from_the_seed(suite):
    assert build_suite(seed=3, sizes=SMALL) == suite
    other = build_suite(seed=4, sizes=SMALL)
    assert other != suite
    # a task's rows do not depend on which other tasks are built
    alone = build_suite(seed=3, sizes=SMALL, tasks=["negate"])
    assert alone["test"] == [r for r in suite["test"] if r["task"] == "negate"]


def test_splits_do_not_overlap(suite):
    for name in SUITE_TASKS:
        inputs = [{r["input"] for r in suite[split] if r["task"] == name} for split in SPLITS]
        assert sum(map(len, inputs)) == SMALL.train + SMALL.validation + SMALL.test  # also: no duplicates
        assert not (inputs[0] & inputs[1] or inputs[0] & inputs[2] or inputs[1] & inputs[2])


def test_labels_are_closed_and_roughly_balanced(suite):
    for name, task in SUITE_TASKS.items():
        targets = collections.Counter(r["target"] for r in suite["train"] if r["task"] == name)
        if task.labels is None:
            assert len(targets) > SMALL.train * 0.5  # free text: mostly distinct answers
            continue
        assert set(targets) == set(task.labels)
        assert min(targets.values()) > SMALL.train / len(task.labels) * 0.7


def test_real_lexical_variety(suite):
    words = collections.Counter(w for r in suite["train"] for w in re.findall(r"[a-z]+", r["input"].lower()))
    assert len(words) >= 450
    per_task = {n: {r["input"].split(":")[0] for r in suite["train"] if r["task"] == n} for n in SUITE_TASKS}
    assert all(len(v) >= 1 for v in per_task.values())


def _surface_polarity(review: str) -> bool:
    """Polarity of a suite review read off its words: the first clause's adjective, flipped by a negation."""
    clause = re.split(r" and | but ", review.split("Review: ", 1)[1])[0].lower()
    words = set(re.findall(r"[a-z]+", clause))
    positive = bool(words & set(vocab.POSITIVE))
    assert positive != bool(words & set(vocab.NEGATIVE)), clause
    return positive != ("not " in clause or "nobody could call" in clause)


def test_sentiment_and_irony_follow_opposite_rules_on_the_same_kind_of_text(suite):
    for split in SPLITS:
        for row in suite[split]:
            if row["task"] in ("sentiment", "irony"):
                surface = "positive" if _surface_polarity(row["input"]) else "negative"
                assert (row["target"] == surface) == (row["task"] == "sentiment"), row


def test_generation_targets_follow_from_the_input(suite):
    for row in suite["train"]:
        sentence = row["input"].split(": ", 1)[1]
        if row["task"] == "answer":
            assert row["target"] in row["input"].split("Text: ", 1)[1]
        elif row["task"] == "past_tense":
            verb = next(v for v in vocab.VERBS if f" {v[1]} the " in sentence)
            assert row["target"] == sentence.replace(f" {verb[1]} the ", f" {verb[2]} the ")
        elif row["task"] == "negate":
            verb = next(v for v in vocab.VERBS if f" {v[1]} the " in sentence)
            assert row["target"] == sentence.replace(f" {verb[1]} the ", f" does not {verb[0]} the ")


def test_same_meaning_yes_iff_same_slots_and_no_negation(suite):
    slots = set(vocab.NAMES) | set(vocab.PLACES) | set(vocab.OBJECTS) | set(vocab.OBJECT_ADJECTIVES) | set(vocab.DAYS) | set(vocab.MONTHS)
    for row in suite["train"]:
        if row["task"] == "same_meaning":
            first, second = re.match(r"Sentence 1: (.*) Sentence 2: (.*) Do the", row["input"]).groups()
            same = {w for w in re.findall(r"[A-Za-z-]+", first) if w in slots} == {w for w in re.findall(r"[A-Za-z-]+", second) if w in slots}
            negated = " not " in f" {first} {second} "
            assert (row["target"] == "yes") == (same and not negated), row


def test_written_suite_reads_back_and_card_is_current(tmp_path):
    paths = write_suite(tmp_path, seed=3, sizes=SMALL)
    for split in SPLITS:
        dataset, report = load_examples(paths[split], ["classify", "nli", "generate"])
        assert dataset.to_list() == build_suite(seed=3, sizes=SMALL)[split]
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["tasks"]["topic"]["chance"] == pytest.approx(0.2)
    assert 0 <= manifest["tasks"]["answer"]["chance"] < 0.1
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind
    # the checked-in data card is the one the generator writes for the defaults
    assert (ROOT / "DATA.md").read_text() == data_card()


def test_command_line(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "mta_moe.data.suite", "--out", str(tmp_path), "--train", "20", "--validation", "5", "--test", "5", "--tasks", "topic", "answer"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert len((tmp_path / "train.jsonl").read_text().splitlines()) == 40
    run = subprocess.run([sys.executable, "-m", "mta_moe.data.suite", "--out", str(tmp_path / "x"), "--tasks", "poetry"], capture_output=True, text=True)
    assert run.returncode == 2 and "unknown ['poetry']" in run.stderr
