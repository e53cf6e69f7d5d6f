"""Per-task metrics of generated text, chosen by task kind, and their aggregates.

Normalisation: classification labels and generation's exact match compare texts after Unicode NFKC, lower
case, surrounding whitespace stripped and inner whitespace collapsed (``normalise``); generation's token F1
splits those into words and punctuation marks (``"the lamp."`` -> ``the``, ``lamp``, ``.``). Extraction
scores use the official SQuAD evaluation's answer normalisation (``squad_normalise``: lower case, ASCII
punctuation removed, the articles a/an/the removed, whitespace collapsed) and its EM and F1 (F1 over
whitespace tokens; an empty prediction or answer scores 1 only against an empty one, as in SQuAD v2.0),
so scores on SQuAD-style data are comparable with published numbers; with several reference answers the
best one counts (``squad_exact_match`` / ``squad_f1`` take a list). ROUGE-L is Google's ``rouge-score``
(``RougeScorer(["rougeL"])``, its own tokenizer: lower case, alphanumeric tokens), reported as the F-measure.

Task kinds and their metrics (the first is the task's primary score, used in macro averages):

* ``classification`` (a closed label set): accuracy, macro-F1 over the label set (a prediction outside
  the set counts as wrong for every class);
* ``extraction`` (the answer is a span of the input, e.g. QA): SQuAD exact match, SQuAD token F1;
* ``generation`` (free text): ROUGE-L F, exact match, token F1.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from typing import Mapping, Sequence

KINDS = ("classification", "extraction", "generation")
PRIMARY = {"classification": "accuracy", "extraction": "exact_match", "generation": "rouge_l"}
MAX_LABELS = 20  # more distinct targets than this: not a classification task
MAX_LABEL_WORDS = 3
EXTRACTION_SHARE = 0.9  # this share of targets found verbatim in their inputs: an extraction task

_TOKEN = re.compile(r"\w+|[^\w\s]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ROUGE = []  # the scorer, built on first use: rouge_score imports NLTK (seconds), which most runs never need


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().lower()


def accuracy(predictions: Sequence[str], targets: Sequence[str]) -> float:
    return _mean([normalise(p) == normalise(t) for p, t in zip(predictions, targets, strict=True)])


exact_match = accuracy  # the same comparison; named for what it means on free text


def macro_f1(predictions: Sequence[str], targets: Sequence[str], labels: Sequence[str] | None = None) -> float:
    """Mean over the label set (default: the targets' distinct values) of each label's F1; a label
    without a true positive scores 0."""
    preds = [normalise(p) for p in predictions]
    gold = [normalise(t) for t in targets]
    classes = sorted({normalise(label) for label in labels} if labels is not None else set(gold))
    scores = []
    for label in classes:
        tp = sum(p == label and g == label for p, g in zip(preds, gold, strict=True))
        fp = sum(p == label and g != label for p, g in zip(preds, gold))
        fn = sum(p != label and g == label for p, g in zip(preds, gold))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return _mean(scores)


def token_f1(prediction: str, target: str) -> float:
    """SQuAD-style F1 of the bag of word/punctuation tokens; two empty strings score 1."""
    return _bag_f1(_TOKEN.findall(normalise(prediction)), _TOKEN.findall(normalise(target)))


def squad_normalise(text: str) -> str:
    """The official SQuAD evaluation's ``normalize_answer``: lower case, punctuation and articles removed,
    whitespace collapsed."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def squad_exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised reference (the best of several)."""
    refs = [references] if isinstance(references, str) else list(references)
    return float(max(squad_normalise(prediction) == squad_normalise(r) for r in refs))


def squad_f1(prediction: str, references: str | Sequence[str]) -> float:
    """SQuAD's token F1 over normalised whitespace tokens, the best over several references."""
    refs = [references] if isinstance(references, str) else list(references)
    return max(_squad_f1_one(prediction, r) for r in refs)


def _squad_f1_one(prediction: str, reference: str) -> float:
    return _bag_f1(squad_normalise(prediction).split(), squad_normalise(reference).split())


def _bag_f1(pred: list[str], gold: list[str]) -> float:
    """F1 of two bags of tokens; two empty bags score 1, one empty bag 0."""
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, target: str) -> float:
    if not _ROUGE:
        from rouge_score import rouge_scorer

        _ROUGE.append(rouge_scorer.RougeScorer(["rougeL"]))
    return _ROUGE[0].score(normalise(target), normalise(prediction))["rougeL"].fmeasure


def infer_kind(inputs: Sequence[str], targets: Sequence[str]) -> str:
    """``classification`` when the targets form a small closed set of short labels, else ``extraction``
    when nearly every target occurs verbatim in its input, else ``generation``."""
    distinct = {normalise(t) for t in targets}
    if len(distinct) <= MAX_LABELS and all(len(t.split()) <= MAX_LABEL_WORDS for t in distinct):
        return "classification"
    found = [normalise(t) in normalise(i) for i, t in zip(inputs, targets, strict=True)]
    return "extraction" if _mean(found) >= EXTRACTION_SHARE else "generation"


def profile_tasks(
    tasks: Sequence[str], inputs: Sequence[str], targets: Sequence[str], kinds: Mapping[str, str] | None = None
) -> dict[str, dict[str, object]]:
    """Per task (from its training rows): ``kind`` (``kinds`` overrides, else inferred) and, for
    classification, the sorted label set."""
    rows: dict[str, tuple[list[str], list[str]]] = {}
    for task, text, target in zip(tasks, inputs, targets, strict=True):
        rows.setdefault(task, ([], []))[0].append(text)
        rows[task][1].append(target)
    out = {}
    for task, (texts, golds) in sorted(rows.items()):
        kind = (kinds or {}).get(task) or infer_kind(texts, golds)
        labels = None
        if kind == "classification":  # one spelling per label (the first seen), as the model was trained on it
            labels = sorted({normalise(t): t.strip() for t in reversed(golds)}.values(), key=normalise)
        out[task] = {"kind": kind, "labels": labels}
    return out


def score_task(
    kind: str, predictions: Sequence[str], targets: Sequence[str], labels: Sequence[str] | None = None
) -> dict[str, float]:
    """The kind's metrics; ``primary`` repeats the kind's main score."""
    if kind == "classification":
        out = {"accuracy": accuracy(predictions, targets), "macro_f1": macro_f1(predictions, targets, labels)}
    elif kind == "extraction":
        out = {
            "exact_match": _mean([squad_exact_match(p, t) for p, t in zip(predictions, targets, strict=True)]),
            "token_f1": _mean([squad_f1(p, t) for p, t in zip(predictions, targets, strict=True)]),
        }
    elif kind == "generation":
        out = {
            "rouge_l": _mean([rouge_l(p, t) for p, t in zip(predictions, targets, strict=True)]),
            "exact_match": exact_match(predictions, targets),
            "token_f1": _mean([token_f1(p, t) for p, t in zip(predictions, targets)]),
        }
    else:
        raise ValueError(f"task kind must be one of {list(KINDS)}, got {kind!r}")
    out["primary"] = out[PRIMARY[kind]]
    return out


def row_scores(kind: str, predictions: Sequence[str], targets: Sequence[str]) -> list[float]:
    """Each row's primary score (their mean is the kind's primary metric): what paired tests resample."""
    if kind == "classification":
        return [float(normalise(p) == normalise(t)) for p, t in zip(predictions, targets, strict=True)]
    if kind == "extraction":
        return [squad_exact_match(p, t) for p, t in zip(predictions, targets, strict=True)]
    if kind == "generation":
        return [rouge_l(p, t) for p, t in zip(predictions, targets, strict=True)]
    raise ValueError(f"task kind must be one of {list(KINDS)}, got {kind!r}")


def score_predictions(
    tasks: Sequence[str],
    targets: Sequence[str],
    predictions: Sequence[str],
    kinds: Mapping[str, str],
    task_types: Mapping[str, str] | None = None,
    labels: Mapping[str, Sequence[str] | None] | None = None,
) -> dict[str, object]:
    """Per-task metrics of rows (task, target, prediction), plus ``macro`` (mean primary score over
    tasks) and ``by_type`` (mean primary score over the tasks of each task type)."""
    rows: dict[str, tuple[list[str], list[str]]] = {}
    for task, target, prediction in zip(tasks, targets, predictions, strict=True):
        preds, golds = rows.setdefault(task, ([], []))
        preds.append(prediction)
        golds.append(target)
    per_task = {task: score_task(kinds[task], p, g, (labels or {}).get(task)) for task, (p, g) in sorted(rows.items())}
    out: dict[str, object] = {"tasks": per_task, "macro": _mean([m["primary"] for m in per_task.values()])}
    if task_types:
        groups: dict[str, list[float]] = {}
        for task, metrics in per_task.items():
            groups.setdefault(task_types[task], []).append(metrics["primary"])
        out["by_type"] = {kind: _mean(values) for kind, values in sorted(groups.items())}
    return out


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if len(values) else float("nan")
