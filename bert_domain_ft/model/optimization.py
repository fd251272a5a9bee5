"""AdamW with BERT's weight-decay exemptions, the linear warm-up / linear decay schedule, and the L2-SP anchor.

``parameter_groups`` is a pure function of the model's named parameters and optional per-parameter learning-rate
multipliers, so other phases (head warm-up, layer-wise decay, the probe's classifier) build their groups with it.

``ParameterAnchor`` guards against forgetting by pulling the pretrained weights back towards where they started:
the penalty λ/2 · Σ‖θ − θ₀‖² over every parameter that came from the checkpoint (fresh heads have no meaningful
start and are left free), applied decoupled like AdamW's weight decay: after each optimizer step,
θ ← θ − lr_t · λ · (θ − θ₀), with lr_t the parameter group's scheduled rate at that step (one step of gradient
descent on the penalty alone). The update is a pure function of the weights, so every DDP process applies the
same one and the replicas stay identical. θ₀ is a float32 copy (4 bytes per anchored parameter); ``distance``
gives the penalty and the drift ‖θ − θ₀‖ (one pass over the parameters, meant for logging steps only).

    groups = parameter_groups(model, learning_rate=3e-5, weight_decay=0.01)
    optimizer = build_optimizer(groups, learning_rate=3e-5, epsilon=1e-8, device=torch.device("cpu"))
    scheduler = build_scheduler(optimizer, total_steps=1000, warmup_steps=100)
    anchor = ParameterAnchor.from_model(model, exclude=head_parameters(model, fresh_heads), device=device)
    optimizer.step(); anchor.pull(optimizer.param_groups, weight=0.01)   # before scheduler.step()
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from bert_domain_ft.errors import UserError

NORMALIZATION_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d)


def decay_exempt_names(model: nn.Module) -> set[str]:
    """Names of parameters that get no weight decay: every bias and every normalization-layer weight."""
    exempt = {name for name, _ in model.named_parameters() if name.endswith("bias")}
    for module_name, module in model.named_modules():
        # Type check plus class name, so custom norms (e.g. "BertLayerNorm", "T5LayerNorm") count too.
        if isinstance(module, NORMALIZATION_TYPES) or "LayerNorm" in type(module).__name__:
            prefix = f"{module_name}." if module_name else ""
            exempt.update(prefix + name for name, _ in module.named_parameters(recurse=False))
    return exempt


def parameter_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    lr_multiplier: Callable[[str], float] | None = None,
    only: set[str] | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: (decayed or not) × (learning-rate multiplier), frozen parameters left out.

    ``lr_multiplier(name)`` scales the learning rate of a parameter (default 1.0); ``only`` restricts the groups
    to the named parameters. Shared (tied) parameters appear once. Each group carries a readable ``"name"``.
    """
    exempt = decay_exempt_names(model)
    groups: dict[tuple[bool, float], dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad or (only is not None and name not in only):
            continue
        decayed = name not in exempt
        multiplier = 1.0 if lr_multiplier is None else float(lr_multiplier(name))
        key = (decayed, multiplier)
        if key not in groups:
            label = ("decay" if decayed else "no_decay") + ("" if multiplier == 1.0 else f"*{multiplier:g}")
            groups[key] = {
                "params": [],
                "weight_decay": weight_decay if decayed else 0.0,
                "lr": learning_rate * multiplier,
                "name": label,
            }
        groups[key]["params"].append(parameter)
    return list(groups.values())


_LAYER_INDEX = re.compile(r"(?:^|\.)(?:encoder|transformer)\.layers?\.(\d+)\.")
_EMBEDDINGS = re.compile(r"(?:^|\.)embeddings\.")


def layer_depth(name: str, num_layers: int) -> int:
    """Depth l of a parameter: 0 for the embeddings, i + 1 for encoder layer i, ``num_layers`` for everything
    above the encoder (pooler, heads)."""
    match = _LAYER_INDEX.search(name)
    if match:
        return int(match.group(1)) + 1
    return 0 if _EMBEDDINGS.search(name) else num_layers


def layerwise_lr_multiplier(model: nn.Module, decay: float) -> Callable[[str], float]:
    """ULMFiT's discriminative fine-tuning as a ``parameter_groups`` multiplier: a parameter at depth l
    (``layer_depth``) of a model with L encoder layers trains at ``decay ** (L - l)`` times the learning rate."""
    depths = [_LAYER_INDEX.search(name) for name, _ in model.named_parameters()]
    num_layers = 1 + max((int(match.group(1)) for match in depths if match), default=-1)

    def multiplier(name: str) -> float:
        return decay ** (num_layers - layer_depth(name, num_layers))

    return multiplier


FUSED_ADAMW_DEVICES = ("cuda", "cpu", "xpu", "mps")


def use_fused_adamw(device: torch.device) -> bool:
    """Fused AdamW (one kernel over all parameters) where torch has it: ~4× faster than foreach on a 2-core CPU."""
    return device.type in FUSED_ADAMW_DEVICES


def build_optimizer(
    groups: list[dict[str, Any]], learning_rate: float, epsilon: float, device: torch.device
) -> torch.optim.AdamW:
    """torch's AdamW over ``groups``: fused where the device has the kernel, else the multi-tensor (foreach) one."""
    if use_fused_adamw(device):
        return torch.optim.AdamW(groups, lr=learning_rate, eps=epsilon, fused=True)
    return torch.optim.AdamW(groups, lr=learning_rate, eps=epsilon, foreach=True)


def warmup_steps_for(total_steps: int, warmup_proportion: float, warmup_steps: int | None = None) -> int:
    """Warm-up steps for a run of ``total_steps`` optimizer steps: ``warmup_steps`` when given (the absolute count of
    the pytorch-transformers 1.x scripts), else the ``warmup_proportion`` share of them; a ``UserError`` when the
    count leaves no step after the ramp."""
    if warmup_steps is None:
        return int(total_steps * warmup_proportion)
    if warmup_steps >= total_steps > 0:
        raise UserError(
            f"--warmup_steps {warmup_steps}: the learning-rate ramp must be shorter than the run's {total_steps} main "
            "optimizer steps; give fewer (or --warmup_proportion, a share of them)"
        )
    return warmup_steps


def learning_rate_at(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the peak learning rate for 0-based optimizer step ``step``.

    Linear warm-up over ``warmup_steps`` steps reaching 1.0 at step ``warmup_steps - 1`` (so no step is taken
    with a zero learning rate), then linear decay towards 0, reaching ``1 / (total - warmup)`` on the last step.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = total_steps - warmup_steps
    if remaining <= 0:
        return 1.0
    return max(0.0, (total_steps - step) / remaining)


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying ``learning_rate_at`` to every group's own learning rate."""
    schedule = functools.partial(learning_rate_at, total_steps=total_steps, warmup_steps=warmup_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def anchor_penalty(drift_squared: float, weight: float) -> float:
    """λ/2 · Σ‖θ − θ₀‖² for a squared drift Σ‖θ − θ₀‖²."""
    return 0.5 * weight * drift_squared


class ParameterAnchor:
    """The starting values θ₀ of a set of parameters, matched to them by identity (not by name)."""

    def __init__(self, parameters: Sequence[nn.Parameter], device: torch.device | str):
        self.parameters = list(parameters)
        # A float32 copy on ``device``: the pull reads it every step, so it lives where the weights do.
        self.starts = [parameter.detach().to(device=device, dtype=torch.float32, copy=True) for parameter in parameters]
        if torch.device(device).type == "cpu" and any(parameter.is_cuda for parameter in parameters):
            # Kept in host memory for the logged drift of GPU weights: pinned, so it streams to the GPU quickly.
            self.starts = [start.pin_memory() for start in self.starts]
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
        """Σ‖θ − θ₀‖² in float64, one parameter at a time (the transient memory is one parameter's), computed where
        the weights are: a start kept in host memory streams to the GPU (~20 ms for BERT-base) rather than the
        weights coming to the CPU and its arithmetic (~10× longer)."""
        total = torch.zeros((), dtype=torch.float64, device=self.parameters[0].device if self.parameters else "cpu")
        for parameter, start in zip(self.parameters, self.starts):
            difference = parameter.detach().float() - start.to(parameter.device, non_blocking=True)
            total += difference.square().sum(dtype=torch.float64)
        return float(total)

    def distance(self, weight: float) -> dict[str, float]:
        """The metrics of a logging step: ``anchor_penalty`` λ/2·Σ‖θ − θ₀‖² and ``drift`` ‖θ − θ₀‖."""
        squared = self.squared_drift()
        return {"anchor_penalty": anchor_penalty(squared, weight), "drift": squared**0.5}
