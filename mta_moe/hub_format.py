"""What an export's ``config.json`` tells transformers: its model type, the Auto classes that load it, and the
remote-code module beside it (``trust_remote_code=True`` loads the export without ``import mta_moe``; without the
package, transformers names it)."""

from __future__ import annotations

MODEL_TYPE = "mta_moe"
AUTO_CLASSES = ("AutoModelForSeq2SeqLM", "AutoModelForCausalLM", "AutoModelForSequenceClassification")
REMOTE_CODE_FILE = "mta_moe_auto.py"
_REMOTE_MODULE = REMOTE_CODE_FILE[:-3]


def auto_map() -> dict[str, str]:
    """``auto_map`` of an export's config.json: the classes of :data:`REMOTE_CODE_FILE` per Auto class."""
    return {
        "AutoConfig": f"{_REMOTE_MODULE}.MTAExportConfig",
        **{name: f"{_REMOTE_MODULE}.MTAModelFor{name[len('AutoModelFor') :]}" for name in AUTO_CLASSES},
    }


def remote_code_source() -> str:
    """The text of :data:`REMOTE_CODE_FILE`: it only imports the installed package's classes."""
    lines = [
        '"""Loads this mta_moe export through transformers\' Auto classes with trust_remote_code=True;',
        "the classes come from the installed mta_moe package (pip install mta_moe). With `import mta_moe`",
        'first, no trust_remote_code is needed."""',
        "import mta_moe.auto_registration as registration",
        "",
        "MTAExportConfig = registration.export_config_class()",
    ]
    lines += [
        f"MTAModelFor{name[len('AutoModelFor') :]} = registration.loader_class({name!r})" for name in AUTO_CLASSES
    ]
    return "\n".join(lines) + "\n"
