"""Metric functions and calibration against hand-computed values."""

import math

import pytest
import torch

from mta_moe.evaluation.calibration import calibrate, fit_temperature, nll, reliability
from mta_moe.evaluation.routing import collapse_warnings
from mta_moe.metrics import (
    accuracy,
    infer_kind,
    macro_f1,
    normalise,
    profile_tasks,
    rouge_l,
    score_predictions,
    score_task,
    squad_exact_match,
    squad_f1,
    squad_normalise,
    token_f1,
)


def test_normalisation_is_case_space_and_unicode_insensitive():
    assert normalise("  The\tLamp \n") == "the lamp"
    assert normalise("ﬁne") == "fine"  # NFKC folds the ligature
    assert accuracy(["Positive ", "no"], ["positive", "yes"]) == 0.5


def test_macro_f1_by_hand():
    preds = ["a", "a", "b", "c", "zzz"]
    gold = ["a", "b", "b", "c", "c"]
    # a: tp1 fp1 fn0 -> 2/3; b: tp1 fp0 fn1 -> 2/3; c: tp1 fp0 fn1 -> 2/3
    assert macro_f1(preds, gold) == pytest.approx(2 / 3)
    # a label in the set that never occurs and is never predicted scores 0
    assert macro_f1(preds, gold, labels=["a", "b", "c", "d"]) == pytest.approx(0.5)


def test_token_f1_by_hand():
    # pred tokens: the red lamp ; gold: the lamp . -> common the, lamp: P 2/3, R 2/3
    assert token_f1("the red lamp", "the lamp.") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0
    assert token_f1("x", "") == 0.0
    assert token_f1("Oslo", "in oslo") == pytest.approx(2 * 1 * 0.5 / 1.5)


def test_squad_normalisation_and_scores_follow_the_official_evaluation():
    # normalize_answer: lower case, ASCII punctuation deleted (not replaced by a space), articles dropped as words
    assert squad_normalise("The Denver Broncos!") == "denver broncos"
    assert squad_normalise("  An  apple, a day ") == "apple day"
    assert squad_normalise("don't") == "dont"
    assert squad_normalise("theatre Anathema") == "theatre anathema"  # articles only as whole words
    assert squad_normalise("1976") == "1976"
    # EM and F1 take the best reference; F1 counts whitespace tokens of the normalised texts
    assert squad_exact_match("the Denver Broncos.", ["Denver Broncos", "Broncos"]) == 1.0
    assert squad_exact_match("Denver", ["Denver Broncos", "Broncos"]) == 0.0
    # pred: broncos of denver; gold: denver broncos -> common 2: P 2/3, R 1
    assert squad_f1("the Broncos of Denver", "Denver Broncos") == pytest.approx(0.8)
    assert squad_f1("Denver", ["Denver Broncos", "Denver"]) == 1.0
    assert squad_f1("Denver", ["Denver Broncos", "Broncos"]) == pytest.approx(2 / 3)
    # SQuAD v2.0: an answer with no tokens after normalisation scores 1 only against another such
    assert squad_f1("the", "a") == 1.0
    assert squad_f1("Denver", "the") == 0.0
    # the extraction kind scores with these: "the lamp" and "lamp" are the same answer
    e = score_task("extraction", ["lamp", "Oslo, Norway"], ["the lamp", "oslo"])
    assert e["exact_match"] == 0.5
    assert e["token_f1"] == pytest.approx((1 + 2 / 3) / 2)


def test_rouge_l_by_hand():
    # LCS of "the cat sat on the mat" and "the cat on mat" is 4: P 4/4, R 4/6
    assert rouge_l("the cat on mat", "the cat sat on the mat") == pytest.approx(2 * 1 * (4 / 6) / (1 + 4 / 6))
    assert rouge_l("Anna bought it.", "anna bought it") == pytest.approx(1.0)


def test_kinds_are_inferred_from_the_data():
    assert infer_kind(["x"] * 4, ["yes", "no", "maybe", "yes"]) == "classification"
    inputs = [f"text {i} the answer is word{i} here" for i in range(30)]
    assert infer_kind(inputs, [f"word{i}" for i in range(30)]) == "extraction"
    assert infer_kind(inputs, [f"rewritten sentence number {i}" for i in range(30)]) == "generation"


def test_score_task_primary_and_aggregates():
    out = score_predictions(
        tasks=["c", "c", "e", "e", "g"],
        targets=["yes", "no", "Oslo", "the lamp", "a b c d"],
        predictions=["yes", "yes", "oslo", "red lamp", "a b x d"],
        kinds={"c": "classification", "e": "extraction", "g": "generation"},
        task_types={"c": "nli", "e": "qa", "g": "qa"},
    )
    c, e, g = out["tasks"]["c"], out["tasks"]["e"], out["tasks"]["g"]
    assert c["primary"] == c["accuracy"] == 0.5
    assert c["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)
    assert e["primary"] == e["exact_match"] == 0.5
    assert e["token_f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert g["primary"] == g["rouge_l"] == pytest.approx(0.75)
    assert out["macro"] == pytest.approx((0.5 + 0.5 + 0.75) / 3)
    assert out["by_type"] == {"nli": 0.5, "qa": pytest.approx((0.5 + 0.75) / 2)}
    with pytest.raises(ValueError, match="task kind"):
        score_task("ranking", ["a"], ["a"])


def _overconfident(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(true logits); the model reports those logits times 6."""
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(n, 3, generator=g)
    labels = torch.multinomial(torch.softmax(true, -1), 1, generator=g).squeeze(1)
    return true * 6.0, labels


def test_temperature_scaling_recovers_the_overconfidence_and_lowers_nll():
    val_logits, val_labels = _overconfident(4000, 0)
    test_logits, test_labels = _overconfident(4000, 1)
    temperature = fit_temperature(val_logits, val_labels)
    assert temperature == pytest.approx(6.0, rel=0.1)
    out = calibrate(val_logits, val_labels, test_logits, test_labels)
    assert out["nll_after"] < out["nll_before"] - 0.5
    assert out["ece_after"] < out["ece_before"] / 3
    assert out["nll_after"] == pytest.approx(nll(test_logits, test_labels, temperature))
    # accuracy is unchanged by a temperature
    assert out["accuracy"] == pytest.approx(float((test_logits.argmax(-1) == test_labels).double().mean()))


def test_reliability_bins_by_hand():
    logits = torch.log(torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.65, 0.35], [0.55, 0.45]]))
    labels = torch.tensor([0, 1, 0, 0])
    table = reliability(logits, labels, bins=10)
    assert table.count[9] == 2 and table.accuracy[9] == 0.5 and table.confidence[9] == pytest.approx(0.95)
    assert table.count[6] == 1 and table.count[5] == 1
    assert table.ece == pytest.approx((2 * 0.45 + abs(1 - 0.65) + abs(1 - 0.55)) / 4)
    assert math.isclose(sum(table.count), 4)


def test_collapse_warnings():
    # 3 adapters, k = 1: adapter 0 serves 95 of 100 sequences, adapter 2 none
    assert collapse_warnings("enc", [[60, 5, 0], [35, 0, 0]], [65, 35]) == ["enc: adapter 0 serves 95% of all sequences", "enc: adapters [2] are never used"]
    # task routing that splits the types over the adapters: nothing to say
    assert collapse_warnings("enc", [[50, 50, 0, 0], [0, 0, 50, 50]], [50, 50]) == []
    # dense mixture (every sequence uses every adapter) is not a collapse
    assert collapse_warnings("enc", [[10, 10], [5, 5]], [10, 5]) == []


def test_task_profiles_keep_one_spelling_per_label_and_honour_declared_kinds():
    tasks = ["nli"] * 4 + ["qa"] * 2
    inputs = ["p"] * 4 + ["the answer is Oslo", "he went to Lima"]
    targets = ["Yes", "no", "yes", "maybe", "Oslo", "Lima"]
    profiles = profile_tasks(tasks, inputs, targets)
    assert profiles["nli"] == {"kind": "classification", "labels": ["maybe", "no", "Yes"]}
    assert profiles["qa"]["kind"] == "classification"  # two short distinct targets look like labels ...
    # ... which is why the kind can be declared (mta.data.task_kinds)
    assert profile_tasks(tasks, inputs, targets, {"qa": "extraction"})["qa"] == {"kind": "extraction", "labels": None}
