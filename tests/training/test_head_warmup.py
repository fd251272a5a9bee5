"""Fresh heads are warmed up, not trusted: the frozen phase moves the heads only, is skipped when it is not needed,
costs no backward pass through the encoder, and composes with metrics and resume."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from training_helpers import assert_identical_weights, load_weights, make_pregenerated, read_metrics
from training_helpers import quick_config as base_config

from bert_domain_ft.errors import UserError
from bert_domain_ft.model.pretraining import head_parameters, load_pretraining_model
from bert_domain_ft.training import recipe
from bert_domain_ft.training.budget import (
    AUTO_FRACTION,
    AUTO_MAX_SHARE,
    AUTO_MAX_STEPS,
    AUTO_MIN_STEPS,
    auto_warmup_steps,
    plan_head_warmup,
)
from bert_domain_ft.training.loop import PretrainingObjective, warmup_learning_rate
from bert_domain_ft.training.recipe import finetune

ENCODER_PREFIXES = ("bert.embeddings.", "bert.encoder.")  # everything that is neither a head nor the pooler


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, tiny_bert_dir: Path) -> Path:
    directory = tmp_path_factory.mktemp("data") / "pregenerated"
    return make_pregenerated(tiny_corpus, tiny_bert_dir, directory, epochs=1, holdout_fraction=0.1)


def quick_config(data: Path, model: Path, output: Path, **overrides: Any) -> Any:
    # These tests follow both fresh heads through the warm-up: NSP asked for explicitly, since "auto" trains an
    # encoder without a trained NSP head on masked LM only (tests/test_objective_defaults.py).
    return base_config(data, model, output, **{"do_eval": False, "objective": "nsp", **overrides})


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


@pytest.fixture()
def warmup_only(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, torch.Tensor]]:
    """Run finetune up to the end of the head warm-up only: weights right before and right after it."""
    captured: dict[str, dict[str, torch.Tensor]] = {}
    original = recipe.TrainingLoop.warm_up_heads

    def wrapped(loop: Any, *arguments: Any) -> Any:
        captured["before"] = snapshot(loop.setup.model)
        plan = original(loop, *arguments)
        captured["after"] = snapshot(loop.setup.model)
        return plan

    monkeypatch.setattr(recipe.TrainingLoop, "warm_up_heads", wrapped)
    monkeypatch.setattr(recipe.TrainingLoop, "run", lambda self, start: start)  # stop before the main phase
    return captured


def test_the_frozen_phase_leaves_the_encoder_bit_identical_and_trains_the_heads(
    warmup_only, data_dir: Path, tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    finetune(quick_config(data_dir, tiny_encoder_dir, tmp_path / "run", head_warmup_steps=4))
    before, after = warmup_only["before"], warmup_only["after"]
    encoder = [name for name in before if name.startswith(ENCODER_PREFIXES)]
    assert encoder and all(torch.equal(before[name], after[name]) for name in encoder)
    heads = [name for name in before if name.startswith(("cls.", "bert.pooler."))]
    changed = [name for name in heads if not torch.equal(before[name], after[name])]
    assert "cls.predictions.transform.dense.weight" in changed and "cls.seq_relationship.weight" in changed
    assert "bert.embeddings.word_embeddings.weight" in encoder  # the decoder's tied matrix stayed frozen too


def test_a_checkpoint_with_heads_skips_the_warm_up(
    warmup_only, data_dir: Path, tiny_bert_dir: Path, tmp_path: Path, caplog
) -> None:
    with caplog.at_level(logging.INFO, logger="bert_domain_ft.training.loop"):
        finetune(quick_config(data_dir, tiny_bert_dir, tmp_path / "run"))
    assert all(torch.equal(warmup_only["before"][k], warmup_only["after"][k]) for k in warmup_only["before"])
    assert "no head-only steps: no pretraining head starts fresh on a trained encoder" in caplog.text
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing was logged: no warm-up records


def test_the_encoder_gets_no_gradient_even_when_its_parameters_require_one(tiny_encoder_dir: Path) -> None:
    torch.manual_seed(0)
    model = load_pretraining_model(str(tiny_encoder_dir)).model
    batch = {
        "input_ids": torch.randint(5, 100, (2, 12)),
        "attention_mask": torch.ones(2, 12, dtype=torch.long),
        "token_type_ids": torch.zeros(2, 12, dtype=torch.long),
        "masked_lm_positions": torch.tensor([[1, 3], [2, 4]]),
        "masked_lm_labels": torch.tensor([[7, 8], [9, -100]]),
        "next_sentence_label": torch.tensor([0, 1]),
    }
    PretrainingObjective(model, with_nsp=True, frozen_encoder=True)(batch).loss.backward()
    # The word-embedding matrix is also the MLM decoder's (tied): the warm-up freezes it; here it requires grad.
    tied = "bert.embeddings.word_embeddings.weight"
    encoder = [p for name, p in model.named_parameters() if name.startswith(ENCODER_PREFIXES) and name != tied]
    assert all(parameter.grad is None for parameter in encoder)  # no graph through the encoder at all
    assert all(parameter.grad is not None for parameter in head_parameters(model, ("mlm", "nsp")))


def test_the_automatic_length_is_the_documented_fraction_clamped_and_at_most_a_share_of_the_run() -> None:
    assert auto_warmup_steps(400) == AUTO_MIN_STEPS + 30 == round(AUTO_FRACTION * 400)
    assert auto_warmup_steps(3000) == round(AUTO_FRACTION * 3000)
    assert auto_warmup_steps(10**6) == AUTO_MAX_STEPS
    assert auto_warmup_steps(220) == AUTO_MIN_STEPS  # at least 50 (not 44), a quarter of 220 being more
    assert (
        [auto_warmup_steps(n) for n in (3, 4, 12, 100)]
        == [0, 1, 3, 25]
        == [int(AUTO_MAX_SHARE * n) for n in (3, 4, 12, 100)]
    )
    plan = plan_head_warmup(None, ("mlm", "nsp"), with_nsp=True, budget_steps=3000)
    assert plan.steps == round(AUTO_FRACTION * 3000) and plan.heads == ("mlm", "nsp")
    assert f"head-only steps: 600 (automatic: {AUTO_FRACTION:.0%} of the 3000 steps" in plan.reason
    assert plan_head_warmup(None, ("mlm",), with_nsp=False, budget_steps=3).steps == 0  # too few to spare any


def test_zero_turns_it_off_and_mlm_only_data_leaves_the_nsp_head_out() -> None:
    assert plan_head_warmup(0, ("mlm", "nsp"), with_nsp=True, budget_steps=500).steps == 0
    assert plan_head_warmup(7, ("mlm", "nsp"), with_nsp=False, budget_steps=500).heads == ("mlm",)
    assert plan_head_warmup(None, (), with_nsp=True, budget_steps=500).steps == 0
    assert plan_head_warmup(None, ("nsp",), with_nsp=False, budget_steps=500).steps == 0  # nothing left to warm


def test_as_many_head_only_steps_as_the_run_has_are_refused_naming_the_budget() -> None:
    with pytest.raises(UserError, match=r"^--head_warmup_steps 20: the head-only steps are part of the run's 20 "):
        plan_head_warmup(20, ("mlm",), with_nsp=False, budget_steps=20, budget_flag="--epochs")
    with pytest.raises(UserError, match=r"raise --max_steps$"):
        plan_head_warmup(30, (), with_nsp=False, budget_steps=20)  # whatever the heads: the flag is wrong
    assert plan_head_warmup(19, ("mlm",), with_nsp=False, budget_steps=20).steps == 19


def test_the_warm_up_rate_ramps_up_then_stays_constant() -> None:
    rates = [warmup_learning_rate(step, 20, 1e-3) for step in range(20)]
    assert rates[0] == pytest.approx(5e-4) and rates[1] == pytest.approx(1e-3) and set(rates[1:]) == {1e-3}


def test_warm_up_is_logged_and_a_resumed_run_does_not_repeat_it(
    data_dir: Path, tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    options = {"head_warmup_steps": 4, "logging_steps": 2, "do_eval": True, "eval_batch_size": 16}
    straight = tmp_path / "straight"
    finetune(quick_config(data_dir, tiny_encoder_dir, straight, **options))
    records = read_metrics(straight)
    warmup = [r for r in records if r.get("kind") == "head_warmup"]
    assert [r["warmup_step"] for r in warmup] == [2, 4] and {r["phase"] for r in warmup} == {"head_warmup"}
    assert all(r["step"] == 0 and r["warmup_steps"] == 4 for r in warmup)
    fresh = [r for r in records if r.get("kind") == "head_warmup_eval"]
    first_eval = next(r for r in records if r.get("kind") == "eval")
    assert len(fresh) == 1 and first_eval["mlm_loss"] < fresh[0]["mlm_loss"]  # warmed heads predict better

    resumed = tmp_path / "resumed"
    finetune(quick_config(data_dir, tiny_encoder_dir, resumed, stop_after_steps=2, **options))
    finetune(quick_config(data_dir, tiny_encoder_dir, resumed, resume=True, **options))
    assert len([r for r in read_metrics(resumed) if r.get("kind") == "head_warmup"]) == 2  # only the first run's
    assert_identical_weights(load_weights(straight), load_weights(resumed))


def test_log_lines_go_through_the_progress_bars_writer_not_into_the_bar(
    data_dir: Path, tiny_encoder_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    import tqdm

    written: list[str] = []
    monkeypatch.setattr(tqdm.std.tqdm, "write", classmethod(lambda cls, text, *args, **kwargs: written.append(text)))
    console = logging.StreamHandler(sys.stderr)  # what the command line's logging.basicConfig sets up
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [*root.handlers, console])
    monkeypatch.setattr(root, "level", logging.INFO)
    options = {"head_warmup_steps": 2, "max_steps": 6, "eval_steps": 2, "do_eval": True, "show_progress": True}
    finetune(quick_config(data_dir, tiny_encoder_dir, tmp_path / "run", eval_batch_size=16, **options))
    assert any(text.startswith("head-only steps done: 2 steps") for text in written)
    assert any(text.startswith("evaluation at step 2:") for text in written)  # was drawn over by the bar
    assert root.handlers[-1] is console  # put back afterwards


# ------------------------------------------------------------------ the warmed base: the fair "before" of a run


def test_a_run_from_a_headless_encoder_keeps_its_warmed_base_beside_it_as_the_fair_before(
    data_dir: Path, tiny_encoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from bert_domain_ft.evaluation.config import EvaluateConfig
    from bert_domain_ft.evaluation.evaluate import evaluate_model
    from bert_domain_ft.model.loading import load_masked_lm_model

    output = tmp_path / "run"
    # 20 head-only steps at a high rate: the tiny corpus's words are nearly uniform, so the best head gains only
    # ~0.6 nats over a random one (MiniLM on the demo's corpus: 10.8 → 6.7 in 26 steps).
    options = {"head_warmup_steps": 20, "max_steps": 24, "do_eval": True, "eval_batch_size": 16}
    options["head_learning_rate"] = 0.1
    finetune(quick_config(data_dir, tiny_encoder_dir, output, **options))
    base = output / "base"
    assert (base / "model.safetensors").is_file() and (base / "tokenizer.json").is_file()
    assert not list(output.glob("*.partial"))
    assert load_masked_lm_model(str(base)).fresh_heads == ()  # a trained masked-LM head, loaded as such
    assert json.loads((output / "training_args.json").read_text())["warmed_base"] == "base"
    records = read_metrics(output)
    (saved,) = [record for record in records if record["kind"] == "warmed_base"]
    assert saved["directory"] == "base" and saved["head_only_steps"] == 20

    def held_out_loss(model: Path) -> float:
        config = EvaluateConfig(model=str(model), data=data_dir, batch_size=16, no_cuda=True, show_progress=False)
        return evaluate_model(config).mlm_loss

    random_head, warmed = held_out_loss(tiny_encoder_dir), held_out_loss(base)
    assert warmed < random_head - 0.4  # not a random head's guesses (5.18 → 4.62 here)
    step_zero = next(record for record in records if record["kind"] == "eval")
    assert warmed == pytest.approx(step_zero["mlm_loss"], rel=1e-4)  # the table's "before" is this model
    printed = capsys.readouterr().out
    assert (
        f"before: the base model with its fresh heads trained alone for 20 head-only steps, saved as {base}" in printed
    )


def test_no_warmed_base_when_the_checkpoint_had_its_heads(data_dir: Path, tiny_bert_dir: Path, tmp_path: Path) -> None:
    import json

    output = tmp_path / "run"
    finetune(quick_config(data_dir, tiny_bert_dir, output, max_steps=4, head_warmup_steps=2))
    assert not (output / "base").exists() and "warmed_base" not in json.loads(
        (output / "training_args.json").read_text()
    )
    assert all(record["kind"] != "warmed_base" for record in read_metrics(output))
