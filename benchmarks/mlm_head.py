"""Masked-LM training step of a non-BERT model: transformers' full-logit loss against our masked-position head.

    python benchmarks/mlm_head.py [--model_type roberta] [--steps 4] [--rounds 3]

A randomly initialised model of ``--model_type`` with RoBERTa's vocabulary (50265) at MiniLM size (6 layers,
hidden 384), batch 16 × 128 tokens with 15% (19 per row) masked, forward + backward, on this CPU, one thread per
core. (a) baseline: ``AutoModelForMaskedLM(..., labels=...)``, logits over the vocabulary at every position;
(b) ours: ``training.loop.PretrainingObjective`` (hidden states gathered at the masked positions, projection
fused with the cross-entropy); (c) the same with the CPU kernels ``finetune`` turns on (memory-light attention,
fast dropout masks, recomputed feed-forward blocks). Rounds interleave the variants; each variant's best round is compared (load
only slows a round down). Targets: (b) ≥ 1.3× (a), (c) ≥ 1.6× (a) in sequences/s; the same loss as (a).
"""

from __future__ import annotations

import argparse
import time

import torch

BATCH, LENGTH, MASKED = 16, 128, 19
SIZE = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}


def build(model_type: str) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForMaskedLM

    size = dict(SIZE)
    if model_type == "distilbert":
        size = {"dim": 384, "n_layers": 6, "n_heads": 12, "hidden_dim": 1536}
    config = AutoConfig.for_model(model_type, vocab_size=50265, max_position_embeddings=LENGTH + 2, **size)
    torch.manual_seed(0)
    return AutoModelForMaskedLM.from_config(config).train()


def batches() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, 50265, (BATCH, LENGTH), generator=generator)
    positions = torch.stack(
        [torch.randperm(LENGTH - 2, generator=generator)[:MASKED].sort().values + 1 for _ in range(BATCH)]
    )
    labels = torch.randint(5, 50265, (BATCH, MASKED), generator=generator)
    sparse = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "token_type_ids": torch.zeros_like(input_ids),
        "masked_lm_positions": positions,
        "masked_lm_labels": labels,
    }
    full_labels = torch.full_like(input_ids, -100)
    full_labels.scatter_(1, positions, labels)
    return sparse, full_labels


def time_steps(step, steps: int) -> float:
    step()  # warm-up (allocator, oneDNN primitives)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return BATCH * steps / (time.perf_counter() - started)


def with_cpu_kernels(model: torch.nn.Module) -> torch.nn.Module:
    # The kernels only: finetune's glibc malloc settings are process-wide and would speed up (a) and (b) too.
    from bert_domain_ft.kernels import use_cpu_kernels

    use_cpu_kernels(model, bf16=False, tune_allocator=False)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_type", default="roberta")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    from bert_domain_ft.training.loop import PretrainingObjective

    model = build(arguments.model_type)
    objective = PretrainingObjective(model, with_nsp=False)
    kernels = PretrainingObjective(with_cpu_kernels(build(arguments.model_type)), with_nsp=False)
    sparse, full_labels = batches()
    inputs = {"input_ids": sparse["input_ids"], "attention_mask": sparse["attention_mask"]}

    def baseline() -> None:
        model.zero_grad(set_to_none=True)
        model(**inputs, labels=full_labels).loss.backward()

    def step_of(loss_module: torch.nn.Module):
        def step() -> None:
            loss_module.model.zero_grad(set_to_none=True)
            loss_module(sparse).loss.backward()

        return step

    variants = {"baseline": baseline, "ours": step_of(objective), "ours+cpu": step_of(kernels)}
    results: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(arguments.rounds):
        for name, step in variants.items():
            results[name].append(time_steps(step, arguments.steps))
            print(f"round {round_index + 1} {name:9s} {results[name][-1]:6.2f} sequences/s", flush=True)
    model.eval()
    with torch.no_grad():
        reference, fused = model(**inputs, labels=full_labels).loss.item(), objective(sparse).loss.item()
    best = {name: max(values) for name, values in results.items()}
    print(
        f"{arguments.model_type}: best sequences/s " + ", ".join(f"{name} {value:.2f}" for name, value in best.items())
    )
    print(f"ratio ours/baseline {best['ours'] / best['baseline']:.2f}× (target ≥ 1.3×), ", end="")
    print(f"ours+cpu/baseline {best['ours+cpu'] / best['baseline']:.2f}× (target ≥ 1.6×); ", end="")
    print(f"eval loss {reference:.5f} (baseline) vs {fused:.5f} (ours)")


if __name__ == "__main__":
    main()
