"""CPU kernels: the memory-light attention and fast dropout compute the same functions and gradients as stock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from training_helpers import load_weights

from bert_domain_ft.kernels import attention, keep_freed_memory, release_free_memory
from bert_domain_ft.kernels.attention import (
    IMPLEMENTATION,
    FastDropout,
    enable_light_attention,
    keep_mask,
    light_attention_forward,
    stock_attention,
    use_fast_dropout,
)
from bert_domain_ft.kernels.feed_forward import (
    RecomputedFeedForward,
    use_recomputed_activation,
    use_recomputed_feed_forward,
)
from bert_domain_ft.model.pretraining import load_pretraining_model, pretraining_losses


class _Module(torch.nn.Module):
    training = True


def _inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    shape = (2, 3, 7, 4)  # (batch, heads, length, head size)
    return tuple(torch.randn(shape, generator=generator, requires_grad=True) for _ in range(3))


def _reference(query, key, value, mask, keep, scale):  # type: ignore[no-untyped-def]
    scores = query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probabilities = torch.softmax(scores, dim=-1)
    if keep is not None:
        probabilities = probabilities * keep * scale
    return (probabilities @ value).transpose(1, 2)


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("padded", [False, True])
def test_output_and_gradients_match_the_textbook_attention(dropout_p: float, padded: bool) -> None:
    query, key, value = _inputs()
    mask = None
    if padded:
        mask = torch.ones(2, 1, 7, 7, dtype=torch.bool)
        mask[1, :, :, 5:] = False  # the second sequence has 5 real tokens
    torch.manual_seed(11)
    ours = light_attention_forward(_Module(), query, key, value, mask, dropout=dropout_p)[0]
    torch.manual_seed(11)  # the same keep-mask draw as inside the function
    keep, scale = keep_mask((2, 3, 7, 7), dropout_p) if dropout_p else (None, 1.0)
    reference = _reference(query, key, value, mask, keep, scale)
    torch.testing.assert_close(ours, reference)
    upstream = torch.randn_like(ours)
    ours_gradients = torch.autograd.grad(ours, (query, key, value), upstream)
    reference_gradients = torch.autograd.grad(reference, (query, key, value), upstream)
    for mine, theirs in zip(ours_gradients, reference_gradients):
        torch.testing.assert_close(mine, theirs)


def test_bf16_autocast_stays_close_to_fp32() -> None:
    query, key, value = _inputs(seed=3)
    exact = light_attention_forward(_Module(), query, key, value, None)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = light_attention_forward(_Module(), query.bfloat16(), key.bfloat16(), value.bfloat16(), None)[0]
    low.float().sum().backward()
    torch.testing.assert_close(low.float(), exact, atol=0.05, rtol=0.05)
    assert query.grad is not None and torch.isfinite(query.grad).all()


def test_bert_losses_gradients_and_weights_are_unchanged_by_the_kernels(tiny_bert_dir: Path, tmp_path: Path) -> None:
    model = load_pretraining_model(str(tiny_bert_dir)).model.eval()  # no dropout: both must agree exactly
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 100, (3, 16), generator=generator)
    attention_mask = torch.ones(3, 16, dtype=torch.long)
    attention_mask[2, 10:] = 0
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros_like(input_ids),
        "masked_lm_positions": torch.tensor([[1, 2], [3, 4], [5, 6]]),
        "masked_lm_labels": torch.tensor([[7, 8], [9, 10], [11, 12]]),
        "next_sentence_label": torch.tensor([0, 1, 0]),
    }

    def loss_and_gradients() -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        loss = pretraining_losses(model, batch, fused=False).loss
        loss.backward()
        return loss.item(), [parameter.grad.clone() for parameter in model.parameters()]

    stock_loss, stock_gradients = loss_and_gradients()
    assert enable_light_attention(model) and model.config._attn_implementation == IMPLEMENTATION
    assert use_recomputed_activation(model) == model.config.num_hidden_layers
    light_loss, light_gradients = loss_and_gradients()
    assert light_loss == pytest.approx(stock_loss, rel=1e-6)
    for stock, light in zip(stock_gradients, light_gradients):
        torch.testing.assert_close(light, stock, rtol=1e-4, atol=1e-6)
    names = set(model.state_dict())
    with stock_attention(model):
        model.save_pretrained(str(tmp_path))
    assert set(load_weights(tmp_path)) <= names and len(load_weights(tmp_path)) > 10
    assert IMPLEMENTATION not in json.dumps(json.loads((tmp_path / "config.json").read_text()))
    assert model.config._attn_implementation == IMPLEMENTATION


def test_saves_far_less_for_backward_than_the_stock_attention() -> None:
    query, key, value = (torch.randn(2, 3, 128, 32, requires_grad=True) for _ in range(3))  # BERT-like L and d
    saved: list[int] = []

    def count(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.data_ptr() not in {query.data_ptr(), key.data_ptr(), value.data_ptr()}:
            saved.append(tensor.untyped_storage().nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
        torch.nn.functional.scaled_dot_product_attention(query, key, value, dropout_p=0.1)
    stock = sum(saved)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
        light_attention_forward(_Module(), query, key, value, None, dropout=0.1)
    # Ours: a 1-byte (B, h, L, L) keep mask and the (B, h, L, d) output; stock: 3 float (B, h, L, L) tensors.
    assert sum(saved) * 5 <= stock


def test_keep_masks_are_reproducible_from_torch_seed_and_drop_at_the_asked_rate() -> None:
    torch.manual_seed(5)
    first, scale = keep_mask((64, 1000), 0.1)
    torch.manual_seed(5)
    again, _ = keep_mask((64, 1000), 0.1)
    assert torch.equal(first, again) and first.dtype == torch.uint8
    assert 1 - first.float().mean().item() == pytest.approx(0.1, abs=0.005)
    assert scale == pytest.approx(1 / 0.9, rel=1e-4)
    assert not torch.equal(first, keep_mask((64, 1000), 0.1)[0])  # the next draw differs


def test_fast_dropout_masks_and_scales_in_training_and_is_identity_in_eval(tiny_bert_dir: Path) -> None:
    dropout = FastDropout(0.25)
    inputs = torch.randn(8, 16, 32, requires_grad=True)
    torch.manual_seed(2)
    outputs = dropout(inputs)
    torch.manual_seed(2)
    keep, scale = keep_mask((8, 16, 32), 0.25)
    torch.testing.assert_close(outputs, inputs * keep * scale)
    outputs.sum().backward()
    torch.testing.assert_close(inputs.grad, keep * scale * torch.ones_like(inputs))
    assert torch.equal(dropout.eval()(inputs), inputs)

    model = load_pretraining_model(str(tiny_bert_dir)).model
    before = {name for name, _ in model.state_dict().items()}
    assert use_fast_dropout(model) > 0
    assert not [m for m in model.modules() if type(m) is torch.nn.Dropout]
    assert {name for name, _ in model.state_dict().items()} == before


def test_chunk_slices_cover_every_item_once_within_the_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attention, "CHUNK_BYTES", 1000)
    slices = attention.chunk_slices(23, 300)  # 3 items fit in 1000 bytes
    assert [(s.start, s.stop) for s in slices] == [
        (0, 3),
        (3, 6),
        (6, 9),
        (9, 12),
        (12, 15),
        (15, 18),
        (18, 21),
        (21, 24),
    ]
    assert [i for s in slices for i in range(23)[s]] == list(range(23))
    assert attention.chunk_slices(4, 5000) == [slice(0, 1), slice(1, 2), slice(2, 3), slice(3, 4)]  # ≥ 1 item


@pytest.mark.parametrize("mask_kind", ["none", "per_sequence", "broadcast"])
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_attention_in_chunks_of_sequences_equals_the_textbook_attention(
    monkeypatch: pytest.MonkeyPatch, mask_kind: str, dropout_p: float
) -> None:
    batch, heads, length, size = 5, 2, 6, 4
    monkeypatch.setattr(attention, "CHUNK_BYTES", 2 * heads * length * length * 4)  # chunks of 2, 2 and 1 sequences
    generator = torch.Generator().manual_seed(4)
    query, key, value = (
        torch.randn(batch, heads, length, size, generator=generator, requires_grad=True) for _ in range(3)
    )
    mask = None
    if mask_kind == "per_sequence":
        mask = torch.ones(batch, 1, length, length, dtype=torch.bool)
        mask[1, :, :, 4:] = False
        mask[4, :, :, 2:] = False
    elif mask_kind == "broadcast":
        mask = torch.ones(1, 1, length, length, dtype=torch.bool).tril()
    torch.manual_seed(3)
    ours = light_attention_forward(_Module(), query, key, value, mask, dropout=dropout_p)[0]
    torch.manual_seed(3)
    keep, scale = keep_mask((batch, heads, length, length), dropout_p) if dropout_p else (None, 1.0)
    reference = _reference(query, key, value, mask, keep, scale)
    torch.testing.assert_close(ours, reference)
    upstream = torch.randn_like(ours)
    for mine, theirs in zip(
        torch.autograd.grad(ours, (query, key, value), upstream),
        torch.autograd.grad(reference, (query, key, value), upstream),
    ):
        torch.testing.assert_close(mine, theirs)


def _feed_forward(bias: bool) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    torch.manual_seed(8)
    return torch.nn.Linear(6, 24, bias=bias), torch.nn.Linear(24, 6, bias=bias)


@pytest.mark.parametrize("bias", [True, False])
def test_recomputed_feed_forward_in_chunks_of_rows_equals_the_plain_block(
    monkeypatch: pytest.MonkeyPatch, bias: bool
) -> None:
    monkeypatch.setattr(attention, "CHUNK_BYTES", 4 * 4 * 24)  # 4 rows a chunk: 11 rows → 4 + 4 + 3
    first, second = _feed_forward(bias)
    block = RecomputedFeedForward(first, torch.nn.functional.gelu, second)
    inputs = torch.randn(1, 11, 6, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ours = block(inputs)
    # Only the input and the parameters are kept: no (rows × 24) pre-activation or activation.
    parameters = {parameter.data_ptr() for parameter in (*first.parameters(), *second.parameters())}
    assert all(t.data_ptr() in parameters or t.shape[-1] != 24 for t in saved)
    reference = second(torch.nn.functional.gelu(first(inputs)))
    torch.testing.assert_close(ours, reference)
    upstream = torch.randn_like(ours)
    wrt = [inputs, *first.parameters(), *second.parameters()]
    for mine, theirs in zip(torch.autograd.grad(ours, wrt, upstream), torch.autograd.grad(reference, wrt, upstream)):
        torch.testing.assert_close(mine, theirs)
    assert [name for name, _ in block.named_parameters()] == [name for name, _ in second.named_parameters()]


def test_recomputed_feed_forward_under_bf16_autocast_stays_close_to_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attention, "CHUNK_BYTES", 4 * 4 * 24)
    first, second = _feed_forward(True)
    block = RecomputedFeedForward(first, torch.nn.functional.gelu, second)
    inputs = torch.randn(2, 7, 6)
    exact = block(inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = block(inputs)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), exact, atol=0.05, rtol=0.05)
    low.float().sum().backward()
    assert first.weight.grad is not None and first.weight.grad.dtype == torch.float32
    assert torch.isfinite(first.weight.grad).all() and torch.isfinite(second.weight.grad).all()


def test_both_feed_forward_variants_keep_bert_losses_and_gradients(tiny_bert_dir: Path) -> None:
    results = []
    for switch in (None, use_recomputed_activation, use_recomputed_feed_forward):
        model = load_pretraining_model(str(tiny_bert_dir)).model.eval()
        names = set(model.state_dict())
        if switch is not None:
            assert switch(model) == model.config.num_hidden_layers
        assert set(model.state_dict()) == names
        generator = torch.Generator().manual_seed(1)
        input_ids = torch.randint(5, 100, (2, 12), generator=generator)
        batch = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "token_type_ids": torch.zeros_like(input_ids),
            "masked_lm_positions": torch.tensor([[1, 2], [3, 4]]),
            "masked_lm_labels": torch.tensor([[7, 8], [9, 10]]),
            "next_sentence_label": torch.tensor([0, 1]),
        }
        loss = pretraining_losses(model, batch, fused=False).loss
        loss.backward()
        results.append((loss.item(), [parameter.grad.clone() for parameter in model.parameters()]))
    for loss, gradients in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-6)
        for mine, stock in zip(gradients, results[0][1]):
            torch.testing.assert_close(mine, stock, rtol=1e-4, atol=1e-6)


def test_allocator_settings_apply_on_glibc_and_memory_can_be_released() -> None:
    import platform

    applied = keep_freed_memory()
    assert applied == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    release_free_memory()  # callable anywhere; a no-op off glibc
    assert torch.zeros(1024, 1024).sum().item() == 0.0  # allocation still works after both
