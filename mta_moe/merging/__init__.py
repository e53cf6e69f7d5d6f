"""Per-task merged exports: an MTA model folded, for one task, into a stock Hugging Face model."""

from .export import MERGE_FILE, export_task, output_difference
from .fold import FoldResult, MergeError, fold_task
from .model_card import model_card
from .tokenizer import stock_tokenizer

__all__ = [
    "MERGE_FILE",
    "FoldResult",
    "MergeError",
    "export_task",
    "fold_task",
    "output_difference",
    "model_card",
    "stock_tokenizer",
]
