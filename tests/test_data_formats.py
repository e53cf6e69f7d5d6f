"""Canonical rows from JSONL, JSON, CSV and Parquet; every bad input gives one error naming file and line."""

import csv
import json
import subprocess
import sys

import datasets
import pytest

from mta_moe.data import DataError, load_examples

TYPES = ["classify", "nli", "generate"]
ROWS = [
    {"input": "Is this review positive? Review: the soup was superb.", "target": "positive", "task": "sentiment", "type": "classify"},
    {"input": "Premise: Anna bought a lamp. Hypothesis: Anna bought a lamp.", "target": "yes", "task": "entail", "type": "nli"},
    {"input": "Rewrite in the past tense: Tom sells the radio.", "target": "Tom sold the radio.", "task": "past", "type": "generate"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path, rows, header=("input", "target", "task", "type")):
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow([row.get(h, "") for h in header])
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_every_format_loads_the_same_rows(tmp_path, fmt):
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, ROWS)
    elif fmt == "json":
        path.write_text(json.dumps(ROWS, indent=2))
    elif fmt == "csv":
        write_csv(path, ROWS)
    else:
        datasets.Dataset.from_list(ROWS).to_parquet(str(path))
    dataset, report = load_examples(path, TYPES)
    assert dataset.to_list() == ROWS
    assert report.rows == 3 and report.skipped == []


def test_official_rows_without_task_are_named_after_their_type(tmp_path):
    rows = [{"input": "x", "target": "y", "type": "nli", "answer_choices": ["y", "n"]}]
    dataset, _ = load_examples(write_jsonl(tmp_path / "pclue.jsonl", rows), TYPES)
    assert dataset.to_list() == [{"input": "x", "target": "y", "task": "nli", "type": "nli"}]


def test_json_object_with_data_list_and_blank_jsonl_lines(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"data": ROWS[:1]}))
    assert load_examples(tmp_path / "d.json", TYPES)[0].to_list() == ROWS[:1]
    (tmp_path / "d.jsonl").write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n")
    assert load_examples(tmp_path / "d.jsonl", TYPES)[0].num_rows == 2


BAD_JSONL = [
    ({"target": "y", "type": "nli"}, "line 2: missing field 'input'"),
    ({"input": "  ", "target": "y", "type": "nli"}, "line 2: field 'input' is empty"),
    ({"input": "x", "target": "", "type": "nli"}, "line 2: field 'target' is empty"),
    ({"input": "x", "target": 1, "type": "nli"}, "line 2: field 'target' must be a string, got int"),
    ({"input": "x", "target": "y", "type": "qa"}, "line 2: type 'qa' is not configured; configured task types: ['classify', 'nli', 'generate']"),
    (["x", "y"], "line 2: expected an object"),
]


@pytest.mark.parametrize("bad,message", BAD_JSONL)
def test_bad_row_names_file_and_line(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], bad, ROWS[1]])
    with pytest.raises(DataError) as info:
        load_examples(path, TYPES)
    assert str(info.value).startswith(f"{path}:{message}")
    assert "\n" not in str(info.value)


def test_invalid_json_and_bytes(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(ROWS[0]).encode() + b'\n{"input": "x",\n')
    with pytest.raises(DataError, match=r"bad.jsonl:line 2: not valid JSON"):
        load_examples(path, TYPES)
    path.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + json.dumps(ROWS[1]).encode()[:-2] + b'\xff"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:line 2: not valid UTF-8 \(byte 0xff at column"):
        load_examples(path, TYPES)
    whole = tmp_path / "bad.json"
    whole.write_text('[\n {"input": "x",\n  "target": }\n]')
    with pytest.raises(DataError, match=r"bad.json:line 3: not valid JSON"):
        load_examples(whole, TYPES)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"input,target,type\nok,yes,nli\ncaf\xe9,yes,nli\n")
    with pytest.raises(DataError, match=r"latin.csv:line 3: not valid UTF-8 \(byte 0xe9 at column 4\)"):
        load_examples(latin, TYPES)


def test_csv_header_and_field_count(tmp_path):
    path = write_csv(tmp_path / "h.csv", ROWS, header=("text", "label", "type"))
    with pytest.raises(
        DataError,
        match=r"h.csv:line 1: CSV header must contain \['input', 'target', 'type'\].*"
        r"missing \['input', 'target'\]",
    ):
        load_examples(path, TYPES)
    path = tmp_path / "n.csv"
    path.write_text('input,target,type\n"a",b,nli\n"a",b,nli,extra\n')
    with pytest.raises(DataError, match=r"n.csv:line 3: expected 3 fields"):
        load_examples(path, TYPES)


def test_missing_file_unknown_format_and_parquet_columns(tmp_path):
    with pytest.raises(DataError, match=r"nope.jsonl: data file not found"):
        load_examples(tmp_path / "nope.jsonl", TYPES)
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match=r"d.txt: unknown file format '.txt'"):
        load_examples(tmp_path / "d.txt", TYPES)
    datasets.Dataset.from_list([{"text": "x", "label": 1}]).to_parquet(str(tmp_path / "p.parquet"))
    with pytest.raises(
        DataError,
        match=r"p.parquet: Parquet columns must include .* missing \['input', 'target', "
        r"'type'\]",
    ):
        load_examples(tmp_path / "p.parquet", TYPES)


def test_skip_mode_reports_which_rows(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\nnot json\n" + json.dumps({"input": "x", "target": "y", "type": "qa"}) + "\n" + json.dumps(ROWS[2]) + "\n")
    dataset, report = load_examples(path, TYPES, on_error="skip")
    assert dataset.to_list() == [ROWS[0], ROWS[2]]
    assert report.rows == 2
    assert [s.split(":")[0] for s in report.skipped] == ["line 2", "line 3"]
    assert "2 skipped" in report.summary()


def test_check_command_exits_non_zero_with_one_line(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", ROWS)
    bad = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], {"input": "x", "target": "y", "type": "qa"}])
    run = subprocess.run([sys.executable, "-m", "mta_moe.data", str(good)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "good.jsonl: 3 rows" in run.stdout and "tasks: entail (nli), past (generate), sentiment (classify)" in run.stdout
    run = subprocess.run([sys.executable, "-m", "mta_moe.data", str(good), str(bad)], capture_output=True, text=True)
    assert run.returncode == 1
    error_lines = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == [f"error: {bad}:line 2: type 'qa' is not configured; configured task types: ['classify', 'nli', 'generate']"]
    run = subprocess.run([sys.executable, "-m", "mta_moe.data", str(bad), "--task-types", "classify", "qa"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_duplicate_rows_are_reported_and_kept(tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [ROWS[0], ROWS[1], ROWS[0], ROWS[0]])
    dataset, report = load_examples(path, TYPES)
    assert len(dataset) == 4  # kept: repeating an example is the data's decision (e.g. upsampling)
    assert report.duplicates == ["line 3 repeats line 1", "line 4 repeats line 1"]
    assert "2 duplicate rows (kept): line 3 repeats line 1" in report.summary()
    run = subprocess.run([sys.executable, "-m", "mta_moe.data", str(path)], capture_output=True, text=True)
    assert run.returncode == 0 and "2 duplicate rows (kept)" in run.stdout


def test_a_100k_character_input_loads_and_is_truncated_when_tokenised(tmp_path):
    from mta_moe.data import TaskRegistry, tokenize_examples, train_sentencepiece_tokenizer

    long = {**ROWS[0], "input": "the soup was superb " * 5000}
    path = write_jsonl(tmp_path / "long.jsonl", [long, ROWS[1]])
    dataset, _ = load_examples(path, TYPES)
    assert len(dataset[0]["input"]) == 100_000
    tokenizer = train_sentencepiece_tokenizer([r["input"] for r in ROWS] * 20, tmp_path / "tok", vocab_size=60)
    registry = TaskRegistry.from_rows(TYPES, [("data", dataset["task"], dataset["type"])])
    tokenized, report = tokenize_examples(dataset, tokenizer, registry, 128, 8, "seq2seq")
    assert len(tokenized[0]["input_ids"]) == 128 > len(tokenized[1]["input_ids"])
    assert report.counts["sentiment"]["inputs_truncated"] == 1 and report.counts["entail"]["inputs_truncated"] == 0
