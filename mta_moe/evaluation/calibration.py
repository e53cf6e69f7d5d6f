"""Calibration of classification tasks: label scores from the model, temperature scaling fitted on
validation, expected calibration error, NLL and reliability-diagram data.

A generative model's confidence in a label is the likelihood of generating it: for each example the
log-likelihood of every label of the task (teacher-forced, summed over the label's tokens and the
end token) is a logit, and the softmax over the label set is the model's class distribution.
Temperature scaling divides those logits by one scalar T per task, fitted by minimising the NLL on
the validation split (Guo et al., 2017); it never changes the arg-max, so accuracy is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_BINS = 10


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    return float(F.cross_entropy(logits.double() / temperature, labels))


def fit_temperature(
    logits: torch.Tensor, labels: torch.Tensor, bounds: tuple[float, float] = (0.05, 20.0), iterations: int = 100
) -> float:
    """The T minimising the NLL of ``softmax(logits / T)``: golden-section search over log T (the NLL
    is unimodal in log T)."""
    if len(labels) == 0:
        return 1.0
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    for _ in range(iterations):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    return math.exp((lo + hi) / 2)


@dataclass
class Reliability:
    """Per confidence bin: mean confidence, accuracy and number of examples (``bins`` equal-width bins of [0, 1])."""

    confidence: list[float]
    accuracy: list[float]
    count: list[int]

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean |accuracy - confidence| over bins."""
        total = sum(self.count)
        return sum(n * abs(a - c) for a, c, n in zip(self.accuracy, self.confidence, self.count)) / max(total, 1)


def reliability(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, bins: int = DEFAULT_BINS
) -> Reliability:
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    confidence, predicted = probs.max(dim=-1)
    correct = (predicted == labels).double()
    index = torch.clamp((confidence * bins).long(), max=bins - 1)
    conf, acc, count = [], [], []
    for b in range(bins):
        members = index == b
        n = int(members.sum())
        count.append(n)
        conf.append(float(confidence[members].mean()) if n else (b + 0.5) / bins)
        acc.append(float(correct[members].mean()) if n else 0.0)
    return Reliability(conf, acc, count)


def calibrate(
    val_logits: torch.Tensor,
    val_labels: torch.Tensor,
    test_logits: torch.Tensor,
    test_labels: torch.Tensor,
    bins: int = DEFAULT_BINS,
) -> dict[str, object]:
    """Fit T on validation; NLL and ECE on test before (T = 1) and after, plus both reliability tables."""
    temperature = fit_temperature(val_logits, val_labels)
    before, after = (
        reliability(test_logits, test_labels, 1.0, bins),
        reliability(test_logits, test_labels, temperature, bins),
    )
    return {
        "temperature": temperature,
        "nll_before": nll(test_logits, test_labels),
        "nll_after": nll(test_logits, test_labels, temperature),
        "ece_before": before.ece,
        "ece_after": after.ece,
        "accuracy": float((test_logits.argmax(-1) == test_labels).double().mean())
        if len(test_labels)
        else float("nan"),
        "reliability_before": before.__dict__,
        "reliability_after": after.__dict__,
    }
