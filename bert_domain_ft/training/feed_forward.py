"""BERT's feed-forward block with the activation recomputed in backward instead of stored.

Autograd keeps both the input and the output of the intermediate activation (GELU) of every layer: two
(batch × length × 4·hidden) tensors, 25 MB per layer at batch 16 × 128 tokens × 1536. Moving the activation
into the output projection's own autograd function keeps only its input and recomputes the activation (an
element-wise op, ~1% of a step) in backward. Same function, same gradients, same parameter names.

    use_recomputed_activation(model)      # BertIntermediate's activation moves into BertOutput.dense
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


class _ActivationLinear(torch.autograd.Function):
    """linear(activation(x)); saves x only. Under autocast the matmul runs in x's (autocast) dtype."""

    @staticmethod
    def forward(ctx: Any, inputs, weight, bias, activation: Callable[[torch.Tensor], torch.Tensor]):  # type: ignore[override]
        with torch.autocast(device_type=inputs.device.type, enabled=False):
            hidden = activation(inputs)
            output = F.linear(hidden, weight.to(hidden.dtype), None if bias is None else bias.to(hidden.dtype))
        ctx.save_for_backward(inputs, weight)
        ctx.activation, ctx.has_bias, ctx.bias_dtype = (
            activation,
            bias is not None,
            None if bias is None else bias.dtype,
        )
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):  # type: ignore[override]
        inputs, weight = ctx.saved_tensors
        with torch.autocast(device_type=inputs.device.type, enabled=False), torch.enable_grad():
            leaf = inputs.detach().requires_grad_()
            hidden = ctx.activation(leaf)
            grad_output = grad_output.to(hidden.dtype)
            grad_hidden = torch.matmul(grad_output, weight.to(hidden.dtype))
            (grad_inputs,) = torch.autograd.grad(hidden, leaf, grad_hidden)
        flat_grad = grad_output.reshape(-1, grad_output.shape[-1])
        grad_weight = torch.matmul(flat_grad.t(), hidden.detach().reshape(-1, hidden.shape[-1])).to(weight.dtype)
        grad_bias = flat_grad.sum(dim=0).to(ctx.bias_dtype) if ctx.has_bias else None
        return grad_inputs, grad_weight, grad_bias, None


class ActivationLinear(nn.Linear):
    """An ``nn.Linear`` that applies ``activation`` to its input first (parameters named as the Linear's)."""

    def __init__(self, linear: nn.Linear, activation: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        self.weight, self.bias = linear.weight, linear.bias  # the same Parameter objects: optimizer and ties hold
        self.activation = activation

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return _ActivationLinear.apply(inputs, self.weight, self.bias, self.activation)


def use_recomputed_activation(model: nn.Module) -> int:
    """Move each BERT layer's intermediate activation into its output projection; returns the layers changed."""
    changed = 0
    for module in model.modules():
        intermediate, output = getattr(module, "intermediate", None), getattr(module, "output", None)
        activation = getattr(intermediate, "intermediate_act_fn", None)
        dense = getattr(output, "dense", None)
        if activation is None or not isinstance(dense, nn.Linear) or isinstance(dense, ActivationLinear):
            continue
        if isinstance(activation, nn.Module):
            intermediate.intermediate_act_fn = nn.Identity()
        else:
            intermediate.intermediate_act_fn = lambda hidden: hidden
        output.dense = ActivationLinear(dense, activation)
        changed += 1
    return changed
