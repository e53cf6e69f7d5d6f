"""Multi-task data: canonical rows, strict readers, hub recipes, the bundled suite, tokenizer, sampling."""
from .collate import IGNORE_INDEX, Collator, TruncationReport, tokenize_examples
from .config import DataConfig
from .curriculum import Curriculum, Phase
from .formats import DataError, LoadReport, load_examples, validate_row
from .pipeline import TaskData, load_task_data
from .recipes import RECIPES, load_recipe
from .registry import TaskRegistry
from .sampling import MixtureSampler, SamplingConfig, rank_slice
from .tokenizer import START_TOKEN, MTASentencePieceTokenizer, load_tokenizer, train_sentencepiece_tokenizer

__all__ = ["Collator", "Curriculum", "DataConfig", "DataError", "IGNORE_INDEX", "LoadReport", "MTASentencePieceTokenizer",
           "MixtureSampler", "Phase", "RECIPES", "START_TOKEN", "SamplingConfig", "TaskData", "TaskRegistry",
           "TruncationReport", "load_examples", "load_recipe", "load_task_data", "load_tokenizer", "rank_slice",
           "tokenize_examples", "train_sentencepiece_tokenizer", "validate_row"]
