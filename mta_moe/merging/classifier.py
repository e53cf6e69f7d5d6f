"""A task of an encoder model with task heads as a stock ``AutoModelForSequenceClassification``: the folded encoder
(its adapters in the FFN, :mod:`.fold`), the backbone's pooler and the task's head as the classifier, ``id2label``
from the head's labels. BERT's classifier reads the pooler output; RoBERTa's reads the first token through a dense +
tanh layer, which is the RoBERTa pooler: both are exact for ``mta.pooling: pooler``."""

from __future__ import annotations

import copy

import torch
import transformers
from torch import nn

from ..modeling.inject import MTAModel
from .fold import MergeError

CLASSIFIERS = {"bert": "BertForSequenceClassification", "roberta": "RobertaForSequenceClassification"}


def check_classifier_foldable(model: MTAModel) -> None:
    """Refuse, naming the setting, an encoder model whose heads no stock classifier reproduces."""
    cfg, model_type = model.mta_config, model.base_model.config.model_type
    if cfg.pooling != "pooler":
        raise MergeError(
            f"mta.pooling is {cfg.pooling!r}: a stock {CLASSIFIERS.get(model_type, 'classifier')} reads the "
            "pooler output; only pooling 'pooler' exports exactly"
        )
    if cfg.route_by != "task":
        raise MergeError(
            "mta.route_by is 'type': the tasks of a type share its adapters but each has its own head; only a "
            "model routed by task exports one stock classifier per task"
        )
    if model_type not in CLASSIFIERS:
        raise MergeError(f"{model_type}: no stock sequence classifier is known for this backbone")
    if getattr(model.base_model, "pooler", None) is None:
        raise MergeError("the backbone has no pooler layer (pooling 'pooler' needs one)")


@torch.no_grad()
def stock_classifier(model: MTAModel, encoder: nn.Module, task: str) -> nn.Module:
    """``encoder`` (the folded stock encoder of ``task``) with the backbone's pooler and ``task``'s head as a stock
    sequence classifier."""
    check_classifier_foldable(model)
    labels = model.task_heads.labels[task]
    config = copy.deepcopy(encoder.config)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.architectures = [CLASSIFIERS[config.model_type]]
    ref = next(encoder.parameters())
    stock = getattr(transformers, CLASSIFIERS[config.model_type])(config).to(device=ref.device, dtype=ref.dtype)
    weight, bias = model.task_heads.task_head(task)
    pooler = model.base_model.pooler.dense
    if config.model_type == "bert":
        missing, unexpected = stock.bert.load_state_dict(encoder.state_dict(), strict=False)
        stock.classifier.weight.copy_(weight)
        stock.classifier.bias.copy_(bias)
    else:  # RoBERTa's classifier has no pooler of its own before it: its dense + tanh is the pooler
        encoder_state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("pooler.")}
        missing, unexpected = stock.roberta.load_state_dict(encoder_state, strict=False)
        stock.classifier.dense.load_state_dict(pooler.state_dict())
        stock.classifier.out_proj.weight.copy_(weight)
        stock.classifier.out_proj.bias.copy_(bias)
    if missing or unexpected:
        raise MergeError(
            f"the folded encoder does not fit {CLASSIFIERS[config.model_type]} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return stock.eval()
