"""L2-SP: a guard against forgetting that pulls the pretrained weights back towards where they started.

The penalty is λ/2 · Σ‖θ − θ₀‖² over every parameter that came from the checkpoint (fresh heads have no
meaningful start and are left free). It is applied decoupled, like AdamW's weight decay: after each optimizer
step, θ ← θ − lr_t · λ · (θ − θ₀), with lr_t the parameter group's scheduled rate at that step, i.e. one step of
gradient descent on the penalty alone (its gradient is λ · (θ − θ₀)). The update is a pure function of the
weights, so every DDP process applies the same one and the replicas stay identical.

θ₀ is a float32 copy: 4 bytes per anchored parameter. ``distance`` gives the penalty and the drift ‖θ − θ₀‖
(one pass over the parameters, meant for logging steps only).

    anchor = ParameterAnchor.from_model(model, exclude=head_parameters(model, fresh_heads), device=device)
    optimizer.step(); anchor.pull(optimizer.param_groups, weight=0.01)   # before scheduler.step()
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn


def anchor_penalty(drift_squared: float, weight: float) -> float:
    """λ/2 · Σ‖θ − θ₀‖² for a squared drift Σ‖θ − θ₀‖²."""
    return 0.5 * weight * drift_squared


class ParameterAnchor:
    """The starting values θ₀ of a set of parameters, matched to them by identity (not by name)."""

    def __init__(self, parameters: Sequence[nn.Parameter], device: torch.device | str):
        self.parameters = list(parameters)
        # A float32 copy on ``device``: the pull reads it every step, so it lives where the weights do.
        self.starts = [parameter.detach().to(device=device, dtype=torch.float32, copy=True) for parameter in parameters]
        self._index = {id(parameter): position for position, parameter in enumerate(self.parameters)}

    @classmethod
    def from_model(
        cls, model: nn.Module, exclude: Iterable[nn.Parameter] = (), device: torch.device | str | None = None
    ) -> ParameterAnchor:
        """Anchor every trainable parameter of ``model`` except ``exclude`` (e.g. fresh heads), at its value now.

        ``device`` defaults to each parameter's own device. Tied parameters are anchored once.
        """
        excluded = {id(parameter) for parameter in exclude}
        chosen = [p for p in model.parameters() if p.requires_grad and id(p) not in excluded]
        if device is None:
            device = chosen[0].device if chosen else "cpu"
        return cls(chosen, device)

    @property
    def num_elements(self) -> int:
        return sum(start.numel() for start in self.starts)

    @property
    def memory_bytes(self) -> int:
        """What the copy of the starting values costs (float32: 4 bytes an element)."""
        return 4 * self.num_elements

    @torch.no_grad()
    def pull(self, param_groups: Sequence[dict[str, Any]], weight: float) -> None:
        """θ ← θ − lr · weight · (θ − θ₀) for each anchored parameter in ``param_groups``, lr its group's ``"lr"``.

        Call it right after ``optimizer.step()`` and before ``scheduler.step()``, so lr is the rate of that step.
        """
        if weight == 0:
            return
        for group in param_groups:
            fraction = float(group["lr"]) * weight  # the share of the way back to θ₀ taken this step
            pairs = [(p, self.starts[self._index[id(p)]]) for p in group["params"] if id(p) in self._index]
            if not pairs or fraction == 0:
                continue
            weights = [parameter for parameter, _ in pairs]
            starts = [start.to(parameter.dtype) for parameter, start in pairs]  # no copy when already float32
            torch._foreach_lerp_(weights, starts, fraction)  # θ + c · (θ₀ − θ) = θ − c · (θ − θ₀)

    @torch.no_grad()
    def squared_drift(self) -> float:
        """Σ‖θ − θ₀‖² in float64, one parameter at a time (the transient memory is one parameter's)."""
        total = torch.zeros((), dtype=torch.float64, device=self.starts[0].device if self.starts else "cpu")
        for parameter, start in zip(self.parameters, self.starts):
            difference = parameter.detach().to(start.device, torch.float32) - start
            total += difference.square().sum(dtype=torch.float64)
        return float(total)

    def distance(self, weight: float) -> dict[str, float]:
        """The metrics of a logging step: ``anchor_penalty`` λ/2·Σ‖θ − θ₀‖² and ``drift`` ‖θ − θ₀‖."""
        squared = self.squared_drift()
        return {"anchor_penalty": anchor_penalty(squared, weight), "drift": squared**0.5}
