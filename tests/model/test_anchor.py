"""--anchor_weight (L2-SP): the pull towards the starting weights, its metrics, its wiring and exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from training_helpers import assert_identical_weights, load_weights, make_pregenerated, quick_config, read_metrics

from bert_domain_ft.cli import build_parser
from bert_domain_ft.cli.commands import simple_config as simple_config_from
from bert_domain_ft.errors import UserError
from bert_domain_ft.model.optimization import ParameterAnchor, anchor_penalty
from bert_domain_ft.training.config import FinetuneConfig
from bert_domain_ft.training.recipe import finetune

EXACT_RATE = 2.0**-15  # with anchor_weight 2**15 the pull at the peak rate is exactly all the way back


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, tiny_bert_dir: Path) -> Path:
    return make_pregenerated(tiny_corpus, tiny_bert_dir, tmp_path_factory.mktemp("data") / "pregenerated")


def _toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))


def _move(model: nn.Module) -> None:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))


def test_penalty_and_drift_are_zero_at_the_start() -> None:
    model = _toy_model()
    assert ParameterAnchor.from_model(model).distance(weight=0.5) == {"anchor_penalty": 0.0, "drift": 0.0}


def test_penalty_is_half_lambda_times_the_squared_drift() -> None:
    model = _toy_model()
    anchor = ParameterAnchor.from_model(model)
    starts = [parameter.detach().clone() for parameter in model.parameters()]
    _move(model)
    squared = sum(float((p.detach() - s).double().square().sum()) for p, s in zip(model.parameters(), starts))
    distance = anchor.distance(weight=0.5)
    assert distance["drift"] == pytest.approx(squared**0.5, rel=1e-6)
    assert distance["anchor_penalty"] == pytest.approx(0.25 * squared, rel=1e-6) == anchor_penalty(squared, 0.5)


def test_decoupled_pull_is_one_gradient_step_on_the_penalty_at_each_groups_rate() -> None:
    model = _toy_model()
    anchor = ParameterAnchor.from_model(model)
    starts = [parameter.detach().clone() for parameter in model.parameters()]
    _move(model)
    weight = 3.0
    groups = [  # two rates, as with --layerwise_lr_decay
        {"params": list(model[0].parameters()), "lr": 0.01},
        {"params": list(model[1].parameters()), "lr": 0.04},
    ]
    penalty = sum(0.5 * weight * (p - s).square().sum() for p, s in zip(model.parameters(), starts))
    gradients = torch.autograd.grad(penalty, list(model.parameters()))
    rates = [0.01, 0.01, 0.04, 0.04]
    expected = [p.detach() - rate * g for p, g, rate in zip(model.parameters(), gradients, rates)]
    anchor.pull(groups, weight)
    for parameter, value in zip(model.parameters(), expected):
        torch.testing.assert_close(parameter.detach(), value)


def test_gradient_of_the_penalty_is_lambda_times_the_distance() -> None:
    start = torch.randn(5)
    weights = (start + torch.randn(5)).requires_grad_(True)
    (gradient,) = torch.autograd.grad(anchor_penalty((weights - start).square().sum(), 2.5), [weights])
    torch.testing.assert_close(gradient, 2.5 * (weights.detach() - start))


def test_excluded_parameters_and_zero_weight_are_left_alone() -> None:
    model = _toy_model()
    anchor = ParameterAnchor.from_model(model, exclude=model[1].parameters())
    _move(model)
    moved = [parameter.detach().clone() for parameter in model.parameters()]
    groups = [{"params": list(model.parameters()), "lr": 0.1}]
    anchor.pull(groups, weight=0.0)
    assert all(torch.equal(p, m) for p, m in zip(model.parameters(), moved))
    anchor.pull(groups, weight=1.0)
    assert not torch.equal(model[0].weight, moved[0])
    assert torch.equal(model[1].weight, moved[2]) and torch.equal(model[1].bias, moved[3])


def test_fresh_heads_are_not_anchored_but_the_pretrained_encoder_is(
    tmp_path: Path, data_dir: Path, tiny_encoder_dir: Path
) -> None:
    """One step from an encoder-only checkpoint at lr·λ = 1: the encoder is pulled all the way back to the
    checkpoint, while the fresh heads keep exactly the step they took (as in a run without the anchor)."""
    options = {"learning_rate": EXACT_RATE, "warmup_proportion": 0.0, "head_warmup_steps": 0, "stop_after_steps": 1}
    finetune(quick_config(data_dir, tiny_encoder_dir, tmp_path / "free", **options))
    finetune(quick_config(data_dir, tiny_encoder_dir, tmp_path / "anchored", anchor_weight=2.0**15, **options))
    start = load_weights(tiny_encoder_dir)
    free = load_weights(tmp_path / "free" / "checkpoint-1")
    anchored = load_weights(tmp_path / "anchored" / "checkpoint-1")
    encoder = [name for name in start if not name.startswith("pooler.")]  # the pooler is the NSP head's
    assert all(torch.equal(anchored[f"bert.{name}"], start[name]) for name in encoder)
    assert not torch.equal(
        free["bert.encoder.layer.0.output.dense.weight"], start["encoder.layer.0.output.dense.weight"]
    )
    heads = [name for name in anchored if name.startswith("cls.") or name.startswith("bert.pooler.")]
    assert heads and all(torch.equal(anchored[name], free[name]) for name in heads)


def test_drift_is_logged_and_smaller_with_the_anchor(tmp_path: Path, data_dir: Path, tiny_bert_dir: Path) -> None:
    options = {"learning_rate": 1e-3, "logging_steps": 3}
    free = finetune(quick_config(data_dir, tiny_bert_dir, tmp_path / "free", **options))
    anchored = finetune(quick_config(data_dir, tiny_bert_dir, tmp_path / "anchored", anchor_weight=200.0, **options))
    last_free = [record for record in read_metrics(free) if record["kind"] == "train"][-1]
    last_anchored = [record for record in read_metrics(anchored) if record["kind"] == "train"][-1]
    assert last_free["step"] == last_anchored["step"]
    assert last_free["anchor_penalty"] == 0.0 and last_free["drift"] > 0  # logged even when λ is 0
    assert 0 < last_anchored["drift"] < 0.9 * last_free["drift"]
    assert last_anchored["anchor_penalty"] == pytest.approx(100.0 * last_anchored["drift"] ** 2)


def test_stop_then_resume_with_the_anchor_gives_the_weights_of_a_straight_run(
    tmp_path: Path, data_dir: Path, tiny_bert_dir: Path
) -> None:
    """θ₀ of the resumed run is the original model, not the checkpoint it resumes from."""
    options = {"epochs": 2, "gradient_accumulation_steps": 2, "train_batch_size": 64, "anchor_weight": 3000.0}
    straight = finetune(quick_config(data_dir, tiny_bert_dir, tmp_path / "straight", **options))
    interrupted = tmp_path / "interrupted"
    finetune(quick_config(data_dir, tiny_bert_dir, interrupted, stop_after_steps=3, **options))
    finetune(quick_config(data_dir, tiny_bert_dir, interrupted, resume=True, **options))
    assert_identical_weights(load_weights(straight), load_weights(interrupted))
    with pytest.raises(UserError, match="anchor_weight 3000.0 → 10.0"):
        finetune(quick_config(data_dir, tiny_bert_dir, interrupted, resume=True, **{**options, "anchor_weight": 10.0}))


def test_config_refuses_a_negative_weight_an_overshooting_pull_and_from_scratch(tmp_path: Path) -> None:
    common = {"pregenerated_data": tmp_path, "output_dir": tmp_path / "out"}
    with pytest.raises(ValueError, match="must not be negative"):
        FinetuneConfig(**common, bert_model="m", anchor_weight=-1.0)
    with pytest.raises(ValueError, match="overshoots"):
        FinetuneConfig(**common, bert_model="m", learning_rate=1e-3, anchor_weight=2000.0)
    with pytest.raises(ValueError, match="from_scratch"):
        FinetuneConfig(**common, from_scratch=True, model_type="bert", tokenizer="t", anchor_weight=1.0)
    assert FinetuneConfig(**common, bert_model="m").anchor_weight == 0.0


def test_flag_reaches_the_finetune_and_simple_configs(tmp_path: Path) -> None:
    from bert_domain_ft.cli.commands import finetune_config as finetune_config_from

    parser = build_parser()
    arguments = parser.parse_args(
        ["finetune", "--pregenerated_data", "d", "--output_dir", "o", "--bert_model", "m", "--anchor_weight", "0.5"]
    )
    assert finetune_config_from(arguments).anchor_weight == 0.5
    arguments = parser.parse_args(
        ["simple", "--train_corpus", "c.txt", "--output_dir", "o", "--bert_model", "m", "--anchor_weight", "2"]
    )
    assert simple_config_from(arguments).training.anchor_weight == 2.0


def test_anchor_weight_comes_from_a_config_file(tmp_path: Path) -> None:
    from bert_domain_ft.cli.commands import finetune_config as finetune_config_from
    from bert_domain_ft.cli.flags import parse_with_config

    config = tmp_path / "run.json"
    config.write_text('{"pregenerated_data": "d", "output_dir": "o", "bert_model": "m", "anchor_weight": 0.25}')
    arguments = parse_with_config(build_parser(), ["finetune", "--config", str(config)])
    assert finetune_config_from(arguments).anchor_weight == 0.25
