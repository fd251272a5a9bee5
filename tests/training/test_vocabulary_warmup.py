"""The rows ``vocab extend`` added are fresh: they warm up with the heads, every other weight (old rows of the
same matrices included) ends the warm-up bit-identical, and a model with trained heads still warms up its rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import vocabulary_assets
from training_helpers import quick_config

from bert_domain_ft.training import recipe
from bert_domain_ft.training.budget import auto_warmup_steps, plan_head_warmup
from bert_domain_ft.training.recipe import finetune

EMBEDDINGS = "bert.embeddings.word_embeddings.weight"
BIAS = "cls.predictions.bias"


@pytest.fixture()
def warmup_weights(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run finetune up to the end of the warm-up only: the weights right before and right after it."""
    captured = vocabulary_assets.capture_warmup(monkeypatch)
    monkeypatch.setattr(recipe.TrainingLoop, "run", lambda self, start: start)
    return captured


def changed_rows(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    differs = (before != after).reshape(before.shape[0], -1).any(dim=1)
    return differs.nonzero().flatten().tolist()


def test_new_rows_warm_up_with_a_fresh_head_and_nothing_else_of_the_encoder_moves(
    warmup_weights, tmp_path: Path
) -> None:
    model, data, rows = vocabulary_assets.write_extended(tmp_path, with_heads=False)
    finetune(quick_config(data, model, tmp_path / "run", head_warmup_steps=3, train_batch_size=8))
    before, after = warmup_weights["before"], warmup_weights["after"]
    assert sorted(changed_rows(before[EMBEDDINGS], after[EMBEDDINGS])) == sorted(rows)
    encoder = [name for name in before if name.startswith("bert.") and name != EMBEDDINGS]
    assert encoder and all(torch.equal(before[name], after[name]) for name in encoder)
    assert not torch.equal(
        before["cls.predictions.transform.dense.weight"], after["cls.predictions.transform.dense.weight"]
    )
    assert len(changed_rows(before[BIAS], after[BIAS])) > len(rows)  # the fresh head's bias trains whole


def test_a_model_with_trained_heads_warms_up_its_new_rows_alone(warmup_weights, tmp_path: Path) -> None:
    model, data, rows = vocabulary_assets.write_extended(tmp_path, with_heads=True)
    finetune(quick_config(data, model, tmp_path / "run", train_batch_size=8, max_steps=10))
    assert warmup_weights["plan"].steps == auto_warmup_steps(10) and warmup_weights["plan"].heads == ()
    before, after = warmup_weights["before"], warmup_weights["after"]
    row_tensors = [name for name in before if name in (EMBEDDINGS, BIAS) or name.startswith("cls.predictions.decoder.")]
    for name in row_tensors:  # the decoder's weight is the embedding matrix (tied), its bias the head's
        assert sorted(changed_rows(before[name], after[name])) == sorted(rows)
    others = [name for name in before if name not in row_tensors]
    assert [name for name in others if not torch.equal(before[name], after[name])] == []


def test_the_plan_counts_fresh_rows_as_something_to_warm_up() -> None:
    assert plan_head_warmup(None, (), False, 100).steps == 0
    plan = plan_head_warmup(None, (), False, 100, fresh_rows=994)
    assert plan.steps == auto_warmup_steps(100) and plan.heads == ()
    assert "994 new vocabulary rows" in plan_head_warmup(0, (), False, 100, fresh_rows=994).reason


def test_new_rows_warm_up_at_the_main_rate_and_the_heads_at_theirs(monkeypatch, tmp_path: Path) -> None:
    """FVT rows are no random start: at the heads' 3e-3 they would be rewritten (77% of their norm in 50 steps)."""
    from bert_domain_ft.training import loop as loop_module

    captured: list[list[dict[str, Any]]] = []
    original = loop_module.build_optimizer
    monkeypatch.setattr(
        loop_module, "build_optimizer", lambda groups, *rest: captured.append(groups) or original(groups, *rest)
    )
    monkeypatch.setattr(recipe.TrainingLoop, "run", lambda self, start: start)
    model, data, _ = vocabulary_assets.write_extended(tmp_path, with_heads=False)
    finetune(quick_config(data, model, tmp_path / "run", head_warmup_steps=1, train_batch_size=8, learning_rate=2e-5))
    rows = len(vocabulary_assets.vocabulary()) + 2  # the extended vocabulary: 4 slots filled, 2 rows grown
    matrix = [group for group in captured[0] if any(p.dim() == 2 and p.shape[0] == rows for p in group["params"])]
    assert [group["initial_lr"] for group in matrix] == [2e-5]  # the word-embedding matrix (the tied decoder)
    assert 3e-3 in {group["initial_lr"] for group in captured[0]}  # the fresh head's groups
