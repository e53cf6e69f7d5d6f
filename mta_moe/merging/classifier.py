"""A task of an encoder model with task heads as a stock ``AutoModelForSequenceClassification``: the folded encoder
(its adapters in the FFN, :mod:`.fold`), the backbone's pooler and the task's head as the classifier, ``id2label``
from the head's labels. BERT's classifier reads the pooler output; RoBERTa's reads the first token through a dense +
tanh layer, which is the RoBERTa pooler: both are exact for ``mta.pooling: pooler``. With ``route_by: type`` the
task's classifier folds its type's adapters (shared by the type's tasks) under its own head."""

from __future__ import annotations

import copy

import torch
import transformers
from torch import nn

from ..modeling.inject import MTAModel
from .fold import MergeError

CLASSIFIERS = {"bert": "BertForSequenceClassification", "roberta": "RobertaForSequenceClassification"}


def head_and_route(model: MTAModel, task: str | None, task_type: str | None) -> tuple[str, str | None, str | None]:
    """A model with task heads exports one classifier per task: ``(head, task, task_type)`` to fold, the task's
    head with the adapters it is routed to (its own, or with ``route_by: type`` its type's: ``task_type``, which
    the caller reads from the export's tasks.json)."""
    heads = model.task_heads.tasks
    if task is None:
        raise MergeError(f"this model has one classification head per task: name a task; its tasks are {heads}")
    if task not in heads:
        raise MergeError(f"task {task!r} has no head in this model; its tasks are {heads}")
    if model.mta_config.route_by == "task":
        return task, task, None
    if task_type is None:
        raise MergeError(f"task {task!r}: name the task type it is routed by (mta.route_by 'type')")
    return task, None, task_type


def check_classifier_foldable(model: MTAModel) -> None:
    """Refuse, naming the setting, an encoder model whose heads no stock classifier reproduces."""
    cfg, model_type = model.mta_config, model.base_model.config.model_type
    if cfg.pooling != "pooler":
        raise MergeError(
            f"mta.pooling is {cfg.pooling!r}: a stock {CLASSIFIERS.get(model_type, 'classifier')} reads the "
            "pooler output; only pooling 'pooler' exports exactly"
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
