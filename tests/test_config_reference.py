"""The config reference is generated from the typed sections: the docs' key tables match the fields (a drifted
table fails here), every key carries a description and what it accepts, and the JSON schema of the ``mta`` section
accepts the shipped configs and refuses what the loader refuses."""

import json
import shutil

import jsonschema
import pytest
from test_training import REPO

from mta_moe import ConfigError
from mta_moe.cli import main
from mta_moe.training.config_reference import SECTIONS, block, json_schema, key_table, update_docs, write_docs
from mta_moe.training.run_config import build_run_config
from mta_moe.typed_config import expected, named_fields, strip_annotation

DOCS = REPO / "docs"


def test_the_docs_tables_are_the_generated_ones():
    texts = {path.name: path.read_text(encoding="utf-8") for path in DOCS.glob("*.md")}
    for name, text in texts.items():
        assert update_docs(text) == text, f"docs/{name}: a key table drifted; run `mta-moe config docs --write docs`"
    for section in SECTIONS:  # every section's table stands somewhere, once
        assert sum(text.count(block(section)) for text in texts.values()) == 1, section


def test_a_drifted_table_is_rewritten_by_the_docs_command(tmp_path, capsys):
    copy = tmp_path / "docs"
    shutil.copytree(DOCS, copy)
    page = copy / "configuration.md"
    original = page.read_text(encoding="utf-8")
    page.write_text(original.replace("task adapters (MoE experts) per layer", "experts"), encoding="utf-8")
    assert update_docs(page.read_text(encoding="utf-8")) == original
    assert main(["config", "docs", "--write", str(copy)]) == 0
    assert "1 file(s) rewritten" in capsys.readouterr().out
    assert page.read_text(encoding="utf-8") == original
    assert write_docs(copy) == []  # nothing left to rewrite


@pytest.mark.parametrize("section", list(SECTIONS))
def test_every_key_has_a_description_and_says_what_it_accepts(section):
    for name, info in SECTIONS[section].__pydantic_fields__.items():
        assert info.description and expected(info), f"{section}.{name}"
        assert f"| `{name}` |" in key_table(section)
        inner = strip_annotation(info.annotation)
        while getattr(inner, "__origin__", None) is list:
            inner = strip_annotation(inner.__args__[0])
        for key, (_, sub) in (named_fields(inner) or {}).items() if not hasattr(inner, "__pydantic_fields__") else []:
            assert sub.description, f"{section}.{name}.{key}"


def _mta(name):
    return json.loads((REPO / "ds_configs" / f"{name}.json").read_text())["mta"]


def test_the_json_schema_accepts_the_shipped_configs_and_refuses_what_the_loader_refuses(capsys):
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for name in ("stage1", "stage2"):
        assert list(validator.iter_errors(_mta(name))) == [], name
    assert set(schema["properties"]) == {*SECTIONS["mta"].__pydantic_fields__, "model", "data", "train"}
    assert schema["properties"]["num_experts"]["default"] == 5
    for key, value in [
        (("k",), 0),
        (("temprature",), 0.5),
        (("gate_mode",), "router"),
        (("train", "early_stopping"), {"patience": 0}),
        (("data", "sampling", "strategy"), "x"),
        (("train", "trainable"), [{"pattern": "*", "lr": -1}]),
        (("model", "vocab_size"), 8),
    ]:
        bad = _mta("stage1")
        node = bad
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = value
        assert list(validator.iter_errors(bad)), key  # the schema refuses it ...
        with pytest.raises(ConfigError, match=r"mta\.(" + "|".join(key) + ")"):  # ... and so does the loader
            build_run_config({"train_micro_batch_size_per_gpu": 2, "mta": bad})
    assert main(["config", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(schema))
