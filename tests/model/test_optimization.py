"""Weight-decay groups, the warm-up/decay schedule, the optimizer choice, precision set-up, and the loss."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from bert_domain_ft.errors import UserError
from bert_domain_ft.model import pretraining
from bert_domain_ft.model.optimization import (
    build_optimizer,
    build_scheduler,
    decay_exempt_names,
    learning_rate_at,
    parameter_groups,
    use_fused_adamw,
    warmup_steps_for,
)
from bert_domain_ft.model.pretraining import IGNORE_INDEX, load_pretraining_model, pretraining_losses
from bert_domain_ft.training.precision import setup_precision

gathered_pretraining_losses = functools.partial(pretraining_losses, fused=False)


@pytest.fixture(scope="module")
def model(tiny_bert_dir: Path) -> torch.nn.Module:
    return load_pretraining_model(str(tiny_bert_dir)).model


def test_biases_and_layernorm_weights_get_no_weight_decay(model: torch.nn.Module) -> None:
    groups = parameter_groups(model, learning_rate=1e-4, weight_decay=0.01)
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    by_decay = {group["weight_decay"]: {names[id(p)] for p in group["params"]} for group in groups}
    assert set(by_decay) == {0.01, 0.0}
    assert all(name.endswith("bias") or "LayerNorm" in name for name in by_decay[0.0])
    assert "bert.encoder.layer.0.attention.output.LayerNorm.weight" in by_decay[0.0]
    assert "bert.encoder.layer.0.attention.self.query.weight" in by_decay[0.01]
    assert not any(name.endswith("bias") or "LayerNorm" in name for name in by_decay[0.01])
    assert sum(len(group["params"]) for group in groups) == len(list(model.parameters()))  # tied ones once
    assert decay_exempt_names(model) == by_decay[0.0]


def test_learning_rate_multipliers_make_their_own_groups(model: torch.nn.Module) -> None:
    def multiplier(name: str) -> float:
        return 0.5 if name.startswith("bert.embeddings.") else 1.0

    groups = parameter_groups(model, learning_rate=1e-4, weight_decay=0.01, lr_multiplier=multiplier)
    rates = {group["name"]: group["lr"] for group in groups}
    assert rates == {"decay": 1e-4, "no_decay": 1e-4, "decay*0.5": 5e-5, "no_decay*0.5": 5e-5}


def test_frozen_and_unselected_parameters_are_left_out(model: torch.nn.Module) -> None:
    head = {"cls.seq_relationship.weight", "cls.seq_relationship.bias"}
    groups = parameter_groups(model, learning_rate=1e-4, weight_decay=0.01, only=head)
    assert sum(len(group["params"]) for group in groups) == 2


def test_schedule_warms_up_linearly_then_decays_linearly_without_a_zero_step() -> None:
    total, warmup = 100, 10
    rates = [learning_rate_at(step, total, warmup) for step in range(total)]
    assert rates[:3] == [0.1, 0.2, pytest.approx(0.3)]
    assert rates[9] == 1.0 == max(rates)
    assert all(later < earlier for earlier, later in zip(rates[10:], rates[11:]))
    assert rates[-1] == pytest.approx(1 / 90) and min(rates) > 0
    assert warmup_steps_for(100, 0.1) == 10 and learning_rate_at(0, 5, 0) == 1.0


def test_scheduler_applies_the_schedule_to_every_group(model: torch.nn.Module) -> None:
    groups = parameter_groups(model, learning_rate=1e-3, weight_decay=0.01, lr_multiplier=lambda name: 2.0)
    optimizer = build_optimizer(groups, learning_rate=1e-3, epsilon=1e-8, device=torch.device("cpu"))
    scheduler = build_scheduler(optimizer, total_steps=20, warmup_steps=4)
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([2e-3 * learning_rate_at(step, 20, 4) for step in range(6)])


def test_adamw_is_fused_on_cpu_and_cuda() -> None:
    assert use_fused_adamw(torch.device("cpu")) and use_fused_adamw(torch.device("cuda"))
    optimizer = build_optimizer([{"params": [torch.nn.Parameter(torch.ones(2))]}], 1e-3, 1e-8, torch.device("cpu"))
    assert optimizer.defaults["fused"] is True


def test_precision_flags_map_to_autocast_dtypes_and_scalers() -> None:
    cpu = torch.device("cpu")
    assert setup_precision(cpu, fp16=False, bf16=False, loss_scale=0).name == "fp32"
    bf16 = setup_precision(cpu, fp16=False, bf16=True, loss_scale=0)
    assert bf16.name == "bf16" and bf16.scaler is None
    with bf16.autocast():
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        setup_precision(cpu, fp16=True, bf16=False, loss_scale=128)


def _random_batch(vocab_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    batch_size, length, slots = 4, 24, 5
    input_ids = torch.randint(5, vocab_size, (batch_size, length), generator=generator)
    positions = torch.stack(
        [torch.randperm(length - 2, generator=generator)[:slots].sort().values + 1 for _ in range(4)]
    )
    labels = torch.randint(5, vocab_size, (batch_size, slots), generator=generator)
    labels[0, 3:] = IGNORE_INDEX  # rows with fewer masked tokens than slots
    labels[2, 1:] = IGNORE_INDEX
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
        "token_type_ids": (torch.arange(length) >= 10).long().expand(batch_size, length).contiguous(),
        "masked_lm_positions": positions,
        "masked_lm_labels": labels,
        "next_sentence_label": torch.tensor([0, 1, 1, 0]),
    }


@pytest.mark.parametrize(
    ("losses", "chunk_rows"),
    [(gathered_pretraining_losses, 128), (pretraining_losses, 128), (pretraining_losses, 5)],
    ids=["gathered", "fused", "fused-in-chunks-of-5"],  # 13 masked rows padded to 32: 6 chunks of 5, then 2
)
def test_masked_position_loss_and_gradients_equal_the_full_logit_loss(  # type: ignore[no-untyped-def]
    model: torch.nn.Module, losses, chunk_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pretraining, "CHUNK_ROWS", chunk_rows)
    model.eval()  # no dropout: the two passes must see the same network
    batch = _random_batch(model.config.vocab_size, torch.Generator().manual_seed(0))
    full_labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
    real = batch["masked_lm_labels"] != IGNORE_INDEX
    rows = torch.arange(4)[:, None].expand_as(real)
    full_labels[rows[real], batch["masked_lm_positions"][real]] = batch["masked_lm_labels"][real]

    ours = losses(model, batch)
    ours.loss.backward()
    our_gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "token_type_ids")}
    reference = model(**inputs, labels=full_labels, next_sentence_label=batch["next_sentence_label"])
    reference.loss.backward()

    assert ours.loss.item() == pytest.approx(reference.loss.item(), rel=1e-5)
    assert int(ours.mlm_count) == int(real.sum())
    reference_logits = reference.prediction_logits[rows[real], batch["masked_lm_positions"][real]]
    assert int(ours.mlm_correct) == int((reference_logits.argmax(-1) == batch["masked_lm_labels"][real]).sum())
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(our_gradients[name], parameter.grad, rtol=1e-4, atol=1e-6, msg=name)
    model.zero_grad()
    model.train()


def test_fused_head_under_bf16_autocast_stays_close_to_fp32(model: torch.nn.Module) -> None:
    model.eval()
    batch = _random_batch(model.config.vocab_size, torch.Generator().manual_seed(1))
    exact = pretraining_losses(model, batch).mlm_loss.item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = pretraining_losses(model, batch)
    low.loss.backward()
    assert low.mlm_loss.item() == pytest.approx(exact, rel=0.02)
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
    model.zero_grad()
    model.train()


def test_fused_head_with_no_masked_token_gives_zero_loss_and_gradients(model: torch.nn.Module) -> None:
    batch = _random_batch(model.config.vocab_size, torch.Generator().manual_seed(2))
    batch["masked_lm_labels"][:] = IGNORE_INDEX
    output = pretraining_losses(model, batch, with_nsp=False)
    output.loss.backward()
    assert output.loss.item() == 0.0 and int(output.mlm_count) == 0 and int(output.mlm_correct) == 0
    assert float(model.cls.predictions.bias.grad.abs().sum()) == 0.0
    model.zero_grad()
