"""The README and docs/ point at things that exist: every relative link resolves to a file (and an anchor to a
heading of it), every `mta-moe SUBCOMMAND --flag` they show names a real subcommand and flag, and every
`make TARGET` a Makefile target. The README stays a front door (at most 250 lines)."""

import re
from pathlib import Path

import pytest
from test_training import REPO

from mta_moe.cli import build_parser
from mta_moe.deepspeed_keys import KNOWN_TOP_LEVEL

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "DATA.md"]
OVERRIDES = {"train", "compare", "affinity", "config"}  # subcommands that take --key value config overrides


def _anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _headings(path: Path) -> set[str]:
    out, code = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            code = not code
        elif not code and line.startswith("#"):
            out.add(_anchor(line.lstrip("#")))
    return out


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_resolve(doc):
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        assert path.exists(), f"{doc.name}: link to {target}: no such file"
        if anchor and path.suffix == ".md":
            assert anchor in _headings(path), f"{doc.name}: link to {target}: no such heading"


def _command_lines(text: str):
    """Every `mta-moe ...` invocation in inline code or code blocks (up to a closing backtick, a pipe or a #)."""
    for match in re.finditer(r"mta-moe ([^`\n|#]*)", text):
        yield match.group(1).strip()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_command_lines_name_real_subcommands_and_flags(doc):
    subs = _subparsers()
    for line in _command_lines(doc.read_text()):
        words = line.split()
        if not words or words[0] in ("--version", "--help") or not re.fullmatch(r"[a-z][a-z-]*", words[0]):
            continue
        sub = words[0]
        assert sub in subs, f"{doc.name}: `mta-moe {line}`: no subcommand {sub!r}; have {sorted(subs)}"
        known = {opt for action in subs[sub]._actions for opt in action.option_strings}
        for word in words[1:]:
            flag = word.split("=")[0].strip("'\",;.)")
            if not re.fullmatch(r"--[a-z][a-z0-9_.-]*", flag):
                continue
            config_key = sub in OVERRIDES and ("." in flag or flag[2:] in KNOWN_TOP_LEVEL)
            assert flag in known or config_key, f"{doc.name}: `mta-moe {line}`: {sub} has no flag {flag}"


def test_make_targets_exist():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), re.M))
    for doc in DOCS:
        for target in re.findall(r"`make ([a-z][a-z-]*)", doc.read_text()):
            assert target in targets, f"{doc.name}: `make {target}`: no such Makefile target"


def test_the_readme_is_a_front_door():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    for section in ("## Install", "## Quickstart", "## Train on your own data", "## Use the result", "## Tests"):
        assert any(line.startswith(section) for line in lines), section
