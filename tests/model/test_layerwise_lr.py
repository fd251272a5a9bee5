"""--layerwise_lr_decay D: the learning rate of layer l of L is lr·D^(L−l), embeddings lowest, heads at lr."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_helpers import quick_config

from bert_domain_ft.model.optimization import layer_depth, layerwise_lr_multiplier, parameter_groups
from bert_domain_ft.model.pretraining import load_pretraining_model
from bert_domain_ft.training.loop import settings_from
from bert_domain_ft.training.setup import OptimizationSettings, build_optimization


def expected_depth(name: str, num_layers: int) -> int:
    """The formula's l, written out independently: embeddings 0, encoder layer i → i + 1, the rest L."""
    if name.startswith("bert.embeddings."):
        return 0
    if name.startswith("bert.encoder.layer."):
        return int(name.split(".")[3]) + 1
    return num_layers


def test_layer_depth_of_bert_roberta_and_distilbert_names() -> None:
    assert layer_depth("bert.embeddings.word_embeddings.weight", 12) == 0
    assert layer_depth("bert.encoder.layer.0.attention.self.query.weight", 12) == 1
    assert layer_depth("roberta.encoder.layer.11.output.dense.bias", 12) == 12
    assert layer_depth("distilbert.transformer.layer.5.ffn.lin1.weight", 6) == 6
    assert layer_depth("cls.predictions.transform.dense.weight", 12) == 12
    assert layer_depth("bert.pooler.dense.weight", 12) == 12


def test_every_parameter_gets_the_rate_of_the_formula(tiny_bert_dir: Path) -> None:
    model = load_pretraining_model(str(tiny_bert_dir)).model
    learning_rate, decay, num_layers = 1e-4, 0.8, model.config.num_hidden_layers
    groups = parameter_groups(model, learning_rate, 0.01, lr_multiplier=layerwise_lr_multiplier(model, decay))
    rate_of = {id(p): group["lr"] for group in groups for p in group["params"]}
    named = dict(model.named_parameters())
    assert set(rate_of) == {id(p) for p in named.values()}  # every trainable parameter, once
    for name, parameter in named.items():
        expected = learning_rate * decay ** (num_layers - expected_depth(name, num_layers))
        assert rate_of[id(parameter)] == pytest.approx(expected, rel=1e-12), name
    embeddings = rate_of[id(named["bert.embeddings.word_embeddings.weight"])]
    assert embeddings == pytest.approx(learning_rate * decay**2)  # 2 layers: the lowest rate
    assert rate_of[id(named["cls.seq_relationship.weight"])] == learning_rate


def test_a_decay_of_one_is_a_single_rate(tiny_bert_dir: Path) -> None:
    model = load_pretraining_model(str(tiny_bert_dir)).model
    groups = parameter_groups(model, 3e-5, 0.01, lr_multiplier=layerwise_lr_multiplier(model, 1.0))
    assert {group["lr"] for group in groups} == {3e-5}


def test_finetune_builds_its_optimizer_and_schedule_with_the_decay(tiny_bert_dir: Path, tmp_path: Path) -> None:
    import torch

    model = load_pretraining_model(str(tiny_bert_dir)).model
    config = quick_config(tmp_path, tiny_bert_dir, tmp_path / "run", learning_rate=1e-3, layerwise_lr_decay=0.5)
    settings = settings_from(OptimizationSettings, config)
    optimizer, scheduler = build_optimization(model, settings, total_steps=10, device=torch.device("cpu"))
    peaks = sorted({group["initial_lr"] for group in optimizer.param_groups})
    assert peaks == pytest.approx([1e-3 * 0.25, 1e-3 * 0.5, 1e-3])  # embeddings, layer 0, layer 1 and the heads
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    ratios = {group["lr"] / group["initial_lr"] for group in optimizer.param_groups}
    assert len({round(ratio, 12) for ratio in ratios}) == 1  # one schedule, scaled per layer


def test_an_impossible_decay_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"layerwise_lr_decay must be in \(0, 1\]"):
        quick_config(tmp_path, tmp_path, tmp_path / "run", layerwise_lr_decay=1.5)
