"""``import mta_moe`` registers the export's model type with transformers' Auto classes: the Auto loaders give the
model ``MTAModel.from_pretrained`` gives (same logits), the wrong Auto class is named, and ``import mta_moe`` itself
imports nothing of transformers (the registration runs when transformers imports its Auto modules)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers as tf
from backbones import make_backbone, make_inputs
from test_inject import TASKS
from test_training import REPO

from mta_moe import MTAConfig, MTAModel
from mta_moe.auto_registration import install


def _saved(tmp_path, name):
    torch.manual_seed(0)
    model = MTAModel(make_backbone(name), MTAConfig(k=2, adapter_dim=8)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # adapters away from their identity init
    model.save_pretrained(tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("name, auto", [("t5", tf.AutoModelForSeq2SeqLM), ("gpt2", tf.AutoModelForCausalLM)])
def test_auto_classes_load_the_mta_model(tmp_path, name, auto):
    install()  # transformers is already imported here: registers at once (idempotent)
    path = _saved(tmp_path, name)
    assert tf.AutoConfig.from_pretrained(path).model_type == "mta_moe"
    loaded, direct = auto.from_pretrained(path).eval(), MTAModel.from_pretrained(path).eval()
    assert isinstance(loaded, MTAModel)
    inputs = make_inputs(name)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs, task_type_ids=TASKS).logits, direct(**inputs, task_type_ids=TASKS).logits)
    assert auto.from_pretrained(path, dtype=torch.bfloat16).base_model.dtype == torch.bfloat16
    wrong = tf.AutoModelForCausalLM if name == "t5" else tf.AutoModelForSeq2SeqLM
    with pytest.raises(ValueError, match=f"the export's backbone is .*; load it with .*not {wrong.__name__}"):
        wrong.from_pretrained(path)
    with pytest.raises(ValueError, match="an mta_moe export takes no device_map argument"):
        auto.from_pretrained(path, device_map="cpu")


def test_import_stays_light_and_registers_when_transformers_loads(tmp_path):
    path = _saved(tmp_path, "t5")
    script = textwrap.dedent(f"""
        import sys
        import mta_moe
        assert not any(m.startswith(("transformers", "torch")) for m in sys.modules), "import mta_moe pulled them in"
        from transformers import AutoModelForSeq2SeqLM
        model = AutoModelForSeq2SeqLM.from_pretrained({str(path)!r})
        print(type(model).__name__)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("MTAModel"), run.stderr[-2000:]


def test_without_the_import_the_export_loads_as_remote_code_or_names_the_package(tmp_path):
    """config.json's auto_map: without ``import mta_moe`` transformers asks for trust_remote_code; with it the export
    loads (same logits as MTAModel.from_pretrained); and where the package is missing, transformers names it."""
    path = _saved(tmp_path, "t5")
    expected = tmp_path / "logits.pt"
    with torch.no_grad():
        torch.save(MTAModel.from_pretrained(path).eval()(**make_inputs("t5"), task_type_ids=TASKS).logits, expected)
    block = textwrap.dedent("""
        import importlib.abc, sys
        class Missing(importlib.abc.MetaPathFinder):  # as on a machine without the package
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] == "mta_moe":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Missing())
    """)
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForSeq2SeqLM
        try:
            AutoModelForSeq2SeqLM.from_pretrained({str(path)!r})
        except ValueError as exc:
            print("refused:", "trust_remote_code=True" in str(exc))
        assert "mta_moe" not in sys.modules
        model = AutoModelForSeq2SeqLM.from_pretrained({str(path)!r}, trust_remote_code=True).eval()
        sys.path.insert(0, {str(REPO / "tests")!r})
        from backbones import make_inputs
        from test_inject import TASKS
        with torch.no_grad():
            logits = model(**make_inputs("t5"), task_type_ids=TASKS).logits
        print(type(model).__name__, torch.equal(logits, torch.load({str(expected)!r})))
    """)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf")}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert run.returncode == 0 and run.stdout.split()[-4:] == ["refused:", "True", "MTAModel", "True"], run.stderr[-2000:]
    missing = block + f"from transformers import AutoModelForSeq2SeqLM\nAutoModelForSeq2SeqLM.from_pretrained({str(path)!r}, trust_remote_code=True)\n"
    run = subprocess.run([sys.executable, "-c", missing], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert run.returncode != 0 and "Run `pip install mta_moe`" in run.stderr.strip().splitlines()[-1], run.stderr[-2000:]
