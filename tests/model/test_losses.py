"""Masked-LM losses of any AutoModelForMaskedLM (the sparse path equals the full-logit loss), loading such models,
and training and evaluating a RoBERTa checkpoint with the same loop and evaluator as BERT."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from bert_domain_ft.errors import UserError
from bert_domain_ft.model.loading import load_masked_lm_model, load_model_for_objective, usable_positions
from bert_domain_ft.model.pretraining import (
    IGNORE_INDEX,
    PretrainingOutput,
    encoder_inputs,
    gather_masked_hidden,
    head_parameters,
    masked_lm_head,
    pretraining_losses,
)

VOCAB = 120
TINY: dict[str, dict[str, Any]] = {
    "bert": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "roberta": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
    "deberta-v2": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "electra": {"hidden_size": 32, "embedding_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2},
}


def tiny_masked_lm(model_type: str, **extra: Any) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForMaskedLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=VOCAB, max_position_embeddings=64, **TINY[model_type], **extra)
    return AutoModelForMaskedLM.from_config(config).eval()  # eval: no dropout, so both paths must agree exactly


def random_batch(rows: int = 3, width: int = 24, slots: int = 5) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, VOCAB, (rows, width), generator=generator)
    attention_mask = torch.ones(rows, width, dtype=torch.long)
    attention_mask[1, 17:] = 0  # a padded row
    input_ids[1, 17:] = 1
    positions = torch.stack([torch.randperm(16, generator=generator)[:slots].sort().values for _ in range(rows)])
    labels = torch.randint(5, VOCAB, (rows, slots), generator=generator)
    labels[2, 3:] = IGNORE_INDEX  # a row with fewer masked tokens
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros_like(input_ids),
        "masked_lm_positions": positions,
        "masked_lm_labels": labels,
    }


def full_logit_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> PretrainingOutput:
    """The reference: the model's own forward pass (logits at every position), gathered at the masked positions."""
    output = model(**encoder_inputs(model.base_model, batch))
    logits = output.logits if hasattr(output, "logits") else output.prediction_logits
    selected, labels = gather_masked_hidden(logits, batch["masked_lm_positions"], batch["masked_lm_labels"])
    return PretrainingOutput.from_mlm_logits(selected, labels)


def masked_lm_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> PretrainingOutput:
    """The sparse path as evaluation runs it: logits of the masked rows only."""
    return pretraining_losses(model, batch, fused=False)


def gradients(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("fused", [False, True], ids=["logits", "fused"])
@pytest.mark.parametrize("model_type", sorted(TINY))
def test_sparse_masked_lm_loss_and_gradients_equal_the_full_logit_ones(model_type: str, fused: bool) -> None:
    model = tiny_masked_lm(model_type)
    batch = random_batch()
    assert masked_lm_head(model) is not None, "the head of this architecture should be recognised"
    sparse, full = pretraining_losses(model, batch, fused=fused), full_logit_losses(model, batch)
    assert sparse.nsp_loss is None
    assert int(sparse.mlm_count) == int(full.mlm_count) == 13
    assert int(sparse.mlm_correct) == int(full.mlm_correct)
    torch.testing.assert_close(sparse.mlm_loss, full.mlm_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sparse.mlm_loss_sum, full.mlm_loss_sum, rtol=1e-5, atol=1e-5)
    sparse_grads = gradients(model, pretraining_losses(model, batch, fused=fused).mlm_loss)
    full_grads = gradients(model, full_logit_losses(model, batch).mlm_loss)
    assert sparse_grads.keys() == full_grads.keys()
    for name in sparse_grads:
        torch.testing.assert_close(sparse_grads[name], full_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_deberta_v2_without_the_legacy_head_is_recognised_too() -> None:
    model = tiny_masked_lm("deberta-v2", legacy=False)
    head = masked_lm_head(model)
    assert head is not None and head.layout == "deberta"
    batch = random_batch()
    torch.testing.assert_close(masked_lm_losses(model, batch).mlm_loss, full_logit_losses(model, batch).mlm_loss)


def test_an_unknown_head_falls_back_to_the_full_forward_pass_with_one_notice(caplog: pytest.LogCaptureFixture) -> None:
    from transformers import AutoConfig, AutoModelForMaskedLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "xlm", vocab_size=VOCAB, emb_dim=32, n_layers=1, n_heads=2, max_position_embeddings=64
    )
    model = AutoModelForMaskedLM.from_config(config).eval()
    batch = random_batch()
    with caplog.at_level(logging.WARNING, logger="bert_domain_ft.model.pretraining"):
        first = masked_lm_losses(model, batch)
        second = masked_lm_losses(model, batch)
    assert masked_lm_head(model) is None
    notices = [record for record in caplog.records if "not recognised" in record.getMessage()]
    assert len(notices) == 1
    torch.testing.assert_close(first.mlm_loss, full_logit_losses(model, batch).mlm_loss)
    torch.testing.assert_close(first.mlm_loss, second.mlm_loss)


def test_the_check_of_a_head_leaves_the_training_mode_and_the_random_state_alone() -> None:
    model = tiny_masked_lm("roberta").train()
    state = torch.get_rng_state()
    assert masked_lm_head(model) is not None
    assert model.training and all(module.training for module in model.modules())
    assert torch.equal(state, torch.get_rng_state())


def test_the_mlm_head_of_a_roberta_is_every_parameter_outside_the_encoder() -> None:
    model = tiny_masked_lm("roberta")
    head = head_parameters(model, ("mlm",))
    names = {name for name, parameter in model.named_parameters() if any(parameter is p for p in head)}
    assert names and all(name.startswith("lm_head.") for name in names)
    embedding = model.roberta.embeddings.word_embeddings.weight
    assert all(parameter is not embedding for parameter in head), "the tied embedding matrix is the encoder's"
    assert head_parameters(model, ("nsp",)) == []


def test_a_bert_with_an_nsp_head_still_gets_its_nsp_loss(tiny_bert_dir: Path) -> None:
    loaded = load_model_for_objective(str(tiny_bert_dir), "nsp")
    batch = random_batch()
    batch["next_sentence_label"] = torch.tensor([0, 1, 0])
    output = masked_lm_losses(loaded.model.eval(), batch)
    assert output.nsp_loss is not None and int(output.nsp_count) == 3
    assert pretraining_losses(loaded.model, batch, with_nsp=False).nsp_loss is None


def test_the_nsp_loss_ignores_unlabelled_instances_and_equals_the_loss_over_the_labelled_ones(
    tiny_bert_dir: Path,
) -> None:
    model = load_model_for_objective(str(tiny_bert_dir), "nsp").model.eval()
    batch = random_batch(rows=4)
    batch["next_sentence_label"] = torch.tensor([0, IGNORE_INDEX, 1, IGNORE_INDEX])  # rows 1, 3: masked-LM only
    output = masked_lm_losses(model, batch)
    labelled = torch.tensor([0, 2])
    reference = model(**encoder_inputs(model.base_model, batch)).seq_relationship_logits[labelled]
    expected = torch.nn.functional.cross_entropy(reference, batch["next_sentence_label"][labelled])
    assert output.nsp_loss is not None and torch.allclose(output.nsp_loss, expected, atol=1e-6)
    assert int(output.nsp_count) == 2
    assert int(output.nsp_correct) == int((reference.argmax(-1) == batch["next_sentence_label"][labelled]).sum())
    # A batch without any NSP label: loss 0 (not NaN), count 0, and the backward pass still reaches every parameter
    # the head owns (with zero gradients), as DistributedDataParallel requires.
    batch["next_sentence_label"] = torch.full((4,), IGNORE_INDEX)
    output = pretraining_losses(model, batch)
    assert output.nsp_loss is not None and float(output.nsp_loss) == 0.0 and int(output.nsp_count) == 0
    grads = gradients(model, output.loss)
    assert torch.count_nonzero(grads["cls.seq_relationship.weight"]) == 0


def test_an_encoder_only_checkpoint_loads_with_a_fresh_mlm_head(tmp_path: Path) -> None:
    from transformers import AutoConfig, RobertaModel

    config = AutoConfig.for_model("roberta", vocab_size=VOCAB, max_position_embeddings=66, **TINY["roberta"])
    RobertaModel(config).save_pretrained(tmp_path / "encoder")
    tiny_masked_lm("roberta").save_pretrained(tmp_path / "with_head")
    assert load_masked_lm_model(str(tmp_path / "encoder")).fresh_heads == ("mlm",)
    assert load_masked_lm_model(str(tmp_path / "with_head")).fresh_heads == ()
    loaded = load_model_for_objective(str(tmp_path / "with_head"), "mlm")
    assert type(loaded.model).__name__ == "RobertaForMaskedLM"
    with pytest.raises(UserError, match="no next-sentence-prediction head"):
        load_model_for_objective(str(tmp_path / "with_head"), "nsp")


def test_mlm_data_keeps_a_bert_as_bert_for_pretraining_without_an_nsp_fresh_head(tiny_encoder_dir: Path) -> None:
    loaded = load_model_for_objective(str(tiny_encoder_dir), "mlm")
    assert type(loaded.model).__name__ == "BertForPreTraining"
    assert loaded.fresh_heads == ("mlm",)


def test_a_directory_that_is_no_model_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot load"):
        load_masked_lm_model(str(tmp_path))


def test_roberta_positions_start_after_the_padding_id() -> None:
    from transformers import AutoConfig

    assert usable_positions(AutoConfig.for_model("roberta", max_position_embeddings=514, pad_token_id=1)) == 512
    assert usable_positions(AutoConfig.for_model("bert", max_position_embeddings=512)) == 512
    assert usable_positions(AutoConfig.for_model("distilbert", max_position_embeddings=512)) == 512


# ------------------------------------------------------------------------------ training a RoBERTa checkpoint


@pytest.fixture(scope="module")
def roberta_data(tiny_corpus: Path, roberta_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bert_domain_ft.data.pregenerate import PregenerateConfig, pregenerate

    output = tmp_path_factory.mktemp("roberta_data")
    manifest = pregenerate(
        PregenerateConfig(
            train_corpus=tiny_corpus,
            output_dir=output,
            bert_model=str(roberta_encoder_dir),
            dynamic_masking=True,
            epochs_to_generate=1,
            max_seq_len=64,
            holdout_fraction=0.1,
            show_progress=False,
        )  # fmt: skip
    )
    assert manifest["objective"] == "mlm", "auto: a RoBERTa has no NSP head"
    return output


def _roberta_config(data: Path, model: Path, output_dir: Path, **overrides: Any):
    from training_helpers import quick_config

    values = {"train_batch_size": 16, "learning_rate": 1e-3, "logging_steps": 1, **overrides}
    return quick_config(data, model, output_dir, **values)


def test_a_roberta_encoder_gets_its_fresh_head_warmed_up_then_adapts_and_saves_a_masked_lm(
    roberta_data: Path, roberta_encoder_dir: Path, tmp_path: Path
) -> None:
    from training_helpers import read_metrics
    from transformers import AutoModelForMaskedLM

    from bert_domain_ft.evaluation.config import EvaluateConfig
    from bert_domain_ft.evaluation.evaluate import evaluate_model
    from bert_domain_ft.training.recipe import finetune

    finetune(_roberta_config(roberta_data, roberta_encoder_dir, tmp_path / "out", head_warmup_steps=4))
    records = read_metrics(tmp_path / "out")
    assert [record["warmup_step"] for record in records if record["kind"] == "head_warmup"] == [1, 2, 3, 4]
    evaluations = [record for record in records if record["kind"] == "eval"]
    assert evaluations[-1]["mlm_loss"] < evaluations[0]["mlm_loss"]
    assert all("nsp_loss" not in record for record in records)
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "out")
    assert type(model).__name__ == "RobertaForMaskedLM"
    result = evaluate_model(EvaluateConfig(model=str(tmp_path / "out"), data=roberta_data, show_progress=False))
    assert result.nsp_accuracy is None and result.nsp_loss is None
    assert result.mlm_loss == pytest.approx(evaluations[-1]["mlm_loss"], rel=1e-4)
    assert result.perplexity == pytest.approx(math.exp(result.mlm_loss))


def test_a_stopped_and_resumed_roberta_run_with_dynamic_masks_ends_bit_identical(
    roberta_data: Path, roberta_encoder_dir: Path, tmp_path: Path
) -> None:
    from training_helpers import assert_identical_weights, load_weights

    from bert_domain_ft.training.recipe import finetune

    settings = {"head_warmup_steps": 0, "epochs": 2, "do_eval": False}
    finetune(_roberta_config(roberta_data, roberta_encoder_dir, tmp_path / "straight", **settings))
    finetune(_roberta_config(roberta_data, roberta_encoder_dir, tmp_path / "stopped", stop_after_steps=20, **settings))
    finetune(_roberta_config(roberta_data, roberta_encoder_dir, tmp_path / "stopped", resume=True, **settings))
    assert_identical_weights(load_weights(tmp_path / "straight"), load_weights(tmp_path / "stopped"))


def test_roberta_data_longer_than_its_usable_positions_is_refused_before_training(
    roberta_data: Path, roberta_encoder_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from transformers import AutoConfig, RobertaModel

    from bert_domain_ft.training.recipe import finetune

    config = AutoConfig.from_pretrained(roberta_encoder_dir)
    config.max_position_embeddings = 64  # 62 usable tokens: positions start after the padding id
    RobertaModel(config).save_pretrained(tmp_path / "short_roberta")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(roberta_encoder_dir / name, tmp_path / "short_roberta" / name)
    with pytest.raises(UserError, match="only 62 positions"):
        finetune(_roberta_config(roberta_data, tmp_path / "short_roberta", tmp_path / "out"))


def test_a_bert_masked_lm_without_an_nsp_head_has_no_nsp_parameters(tiny_bert_dir: Path) -> None:
    """--from_scratch --model_type bert on MLM-only data builds a BertForMaskedLM: freezing its (absent) NSP head
    selected nothing instead of failing on cls.seq_relationship."""
    from transformers import BertForMaskedLM

    from bert_domain_ft.model.pretraining import head_parameters

    model = BertForMaskedLM.from_pretrained(str(tiny_bert_dir))
    assert head_parameters(model, ("nsp",)) == []
    assert len(head_parameters(model, ("mlm",))) > 0
