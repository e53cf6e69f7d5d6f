"""Hub recipes run their real conversion on local files with the hub datasets' columns."""

import json

import datasets
import pytest

from mta_moe.data import RECIPES, DataError, load_recipe

TYPES = ["classify", "nli", "generate"]

# Look-alike rows with each hub dataset's columns (and extra columns the hub files carry).
LOOK_ALIKES = {
    "sst2": (
        [{"sentence": "a gripping , funny film ", "label": 1, "idx": 0}, {"sentence": "dull", "label": 0, "idx": 1}],
        [
            ("Is this sentence positive or negative? Sentence: a gripping , funny film", "positive"),
            ("Is this sentence positive or negative? Sentence: dull", "negative"),
        ],
    ),
    "mnli": (
        [
            {"premise": "A man sings.", "hypothesis": "Someone sings.", "label": 0, "idx": 0},
            {"premise": "A man sings.", "hypothesis": "A man sleeps.", "label": 2, "idx": 1},
            {"premise": "A man sings.", "hypothesis": "A man sings well.", "label": 1, "idx": 2},
        ],
        [
            ("Premise: A man sings. Hypothesis: Someone sings. Entailment, neutral or contradiction?", "entailment"),
            ("Premise: A man sings. Hypothesis: A man sleeps. Entailment, neutral or contradiction?", "contradiction"),
            ("Premise: A man sings. Hypothesis: A man sings well. Entailment, neutral or contradiction?", "neutral"),
        ],
    ),
    "qnli": (
        [{"question": "Who sang?", "sentence": "Ann sang.", "label": 0, "idx": 0}],
        [("Question: Who sang? Sentence: Ann sang. Does the sentence answer the question?", "entailment")],
    ),
    "rte": (
        [{"sentence1": "Ann sang.", "sentence2": "Nobody sang.", "label": 1, "idx": 0}],
        [("Premise: Ann sang. Hypothesis: Nobody sang. Entailment or not_entailment?", "not_entailment")],
    ),
    "boolq": (
        [{"question": "is the sky blue", "answer": True, "passage": "The sky is blue."}],
        [("Passage: The sky is blue. Question: is the sky blue? Yes or no?", "yes")],
    ),
    "squad": (
        [
            {
                "id": "1",
                "title": "T",
                "context": "Ann sang in Oslo.",
                "question": "Where did Ann sing?",
                "answers": {"text": ["Oslo", "in Oslo"], "answer_start": [12, 9]},
            }
        ],
        [("Answer from the text. Question: Where did Ann sing? Text: Ann sang in Oslo.", "Oslo")],
    ),
    "xsum": ([{"document": "Long text about rain.", "summary": "It rained.", "id": "7"}], [("Summarize: Long text about rain.", "It rained.")]),
}


def test_every_recipe_has_a_look_alike():
    assert set(LOOK_ALIKES) == set(RECIPES)
    assert {"sst2", "mnli", "qnli", "rte", "boolq", "squad", "xsum"} <= set(RECIPES)


@pytest.mark.parametrize("name", sorted(LOOK_ALIKES))
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_recipe_converts_local_files(tmp_path, name, fmt):
    rows, expected = LOOK_ALIKES[name]
    path = tmp_path / f"{name}.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    dataset, report = load_recipe(name, "train", TYPES, data_files=str(path), cache_dir=str(tmp_path / "cache"))
    assert [(r["input"], r["target"]) for r in dataset] == expected
    assert set(dataset["task"]) == {name} and set(dataset["type"]) == {RECIPES[name].task_type}
    assert report.rows == len(expected)


def test_recipe_errors(tmp_path):
    path = tmp_path / "sst2_test.jsonl"
    path.write_text(json.dumps({"sentence": "x", "label": -1, "idx": 0}) + "\n")
    with pytest.raises(
        DataError,
        match=r"recipe sst2 \(.*sst2_test.jsonl\): row 1: label -1 is not one of 0..1 "
        r"\(negative, positive\); unlabelled splits",
    ):
        load_recipe("sst2", "test", TYPES, data_files=str(path), cache_dir=str(tmp_path / "c"))
    path = tmp_path / "wrong.jsonl"
    path.write_text(json.dumps({"text": "x", "label": 1}) + "\n")
    with pytest.raises(DataError, match=r"recipe sst2 .*missing columns \['sentence'\]"):
        load_recipe("sst2", "train", TYPES, data_files=str(path), cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match=r"recipe 'cola': unknown; available recipes"):
        load_recipe("cola", "train", TYPES)
    with pytest.raises(DataError, match=r"recipe squad: data file not found"):
        load_recipe("squad", "train", TYPES, data_files=str(tmp_path / "none.jsonl"))
    with pytest.raises(DataError, match=r"type 'generate' is not configured"):
        load_recipe("xsum", "train", ["classify"], data_files=str(_xsum(tmp_path)), cache_dir=str(tmp_path / "c"))


def _xsum(tmp_path):
    path = tmp_path / "xsum.jsonl"
    path.write_text(json.dumps({"document": "d", "summary": "s", "id": "1"}) + "\n")
    return path


def test_hub_loading_is_the_real_call_and_fails_clearly_offline(tmp_path):
    # conftest sets HF_HUB_OFFLINE: the real datasets.load_dataset("nyu-mll/glue", "sst2") is attempted.
    with pytest.raises(
        DataError,
        match=r"recipe sst2: could not load nyu-mll/glue/sst2 split train from the hub "
        r".*pass data_files with the same columns \['sentence', 'label'\]",
    ):
        load_recipe("sst2", "train", TYPES, cache_dir=str(tmp_path / "c"))


def test_recipe_type_override_and_limit(tmp_path):
    path = tmp_path / "boolq.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer": i % 2 == 0, "passage": "p"}) + "\n" for i in range(5)))
    dataset, _ = load_recipe("boolq", "train", ["classify", "qa"], data_files=str(path), task_type="qa", limit=3, cache_dir=str(tmp_path / "c"))
    assert dataset["type"] == ["qa"] * 3 and dataset["target"] == ["yes", "no", "yes"]
