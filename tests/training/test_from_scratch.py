"""Pretraining from scratch: models built from a tokenizer trained in the fixture, overrides checked."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bert_domain_ft.corpus.config import TokenizerTrainingConfig
from bert_domain_ft.corpus.tokenizer_training import train_tokenizer
from bert_domain_ft.errors import UserError
from bert_domain_ft.model.loading import build_model_from_scratch, parse_overrides, scratch_config

TINY_OVERRIDES = "hidden_size=64,num_hidden_layers=2,num_attention_heads=2,intermediate_size=128"


@pytest.fixture(scope="module")
def bpe_tokenizer(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE (RoBERTa) tokenizer trained on the tiny corpus: <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4."""
    output = tmp_path_factory.mktemp("bpe") / "tokenizer"
    config = TokenizerTrainingConfig(corpus=tiny_corpus, output=output, kind="bpe", vocab_size=400, show_progress=False)
    return train_tokenizer(config)


@pytest.fixture(scope="module")
def wordpiece_tokenizer(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("wordpiece") / "tokenizer"
    config = TokenizerTrainingConfig(
        corpus=tiny_corpus, output=output, kind="wordpiece", vocab_size=200, lowercase=True, show_progress=False
    )
    return train_tokenizer(config)


def test_a_roberta_from_scratch_fits_its_tokenizer_and_the_data_length(bpe_tokenizer: Path) -> None:
    model = build_model_from_scratch("roberta", str(bpe_tokenizer), TINY_OVERRIDES, max_seq_len=64)
    config = model.config
    assert type(model).__name__ == "RobertaForMaskedLM"
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (64, 2, 128)
    assert config.vocab_size == 400 and config.pad_token_id == 1
    assert (config.bos_token_id, config.eos_token_id) == (0, 2)
    assert config.max_position_embeddings == 64 + 2, "RoBERTa positions start after the padding id"


def test_a_bert_from_scratch_gets_an_nsp_head_when_the_data_has_nsp_labels(wordpiece_tokenizer: Path) -> None:
    with_nsp = build_model_from_scratch("bert", str(wordpiece_tokenizer), TINY_OVERRIDES, 64, with_nsp_head=True)
    without = build_model_from_scratch("bert", str(wordpiece_tokenizer), TINY_OVERRIDES, 64)
    assert type(with_nsp).__name__ == "BertForPreTraining" and type(without).__name__ == "BertForMaskedLM"
    assert with_nsp.config.max_position_embeddings == 64 and with_nsp.config.pad_token_id == 0
    with pytest.raises(UserError, match="no next-sentence-prediction head"):
        build_model_from_scratch("roberta", str(wordpiece_tokenizer), TINY_OVERRIDES, 64, with_nsp_head=True)


def test_distilbert_takes_the_standard_names_for_its_sizes(bpe_tokenizer: Path) -> None:
    model = build_model_from_scratch(
        "distilbert", str(bpe_tokenizer), "hidden_size=64,num_hidden_layers=2,num_attention_heads=4,hidden_dim=96", 64
    )
    assert (model.config.dim, model.config.n_layers, model.config.n_heads, model.config.hidden_dim) == (64, 2, 4, 96)


def test_overrides_parse_with_spaces_and_types_follow_the_defaults(wordpiece_tokenizer: Path) -> None:
    assert parse_overrides(" hidden_size = 64 , num_hidden_layers=2,") == {
        "hidden_size": "64",
        "num_hidden_layers": "2",
    }
    assert parse_overrides("") == {}
    config = scratch_config(
        "bert", str(wordpiece_tokenizer), "hidden_size=64,num_attention_heads=4,hidden_dropout_prob=0,hidden_act=relu"
    )
    assert config.hidden_size == 64 and isinstance(config.hidden_dropout_prob, float) and config.hidden_act == "relu"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ("hiden_size=64", "hiden_size is not a bert setting; did you mean hidden_size"),
        ("hidden_size=250,num_attention_heads=4", "not divisible by num_attention_heads 4"),
        ("hidden_size=0", "must be a positive whole number"),
        ("num_hidden_layers=2.5", "takes int"),
        ("hidden_size=big", "takes int"),
        ("attention_probs_dropout_prob=1.2", r"must be in \[0, 1\)"),
        ("hidden_act=swishy", "not an activation"),
        ("pad_token_id=3", "comes from the tokenizer"),
        ("vocab_size=50", "smaller than the tokenizer's 200"),
        ("max_position_embeddings=32", "needs at least 64"),
        ("hidden_size", "is not KEY=VALUE"),
        ("hidden_size=64,hidden_size=32", "given twice"),
    ],
)
def test_bad_overrides_are_one_line_user_errors(wordpiece_tokenizer: Path, overrides: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as caught:
        scratch_config("bert", str(wordpiece_tokenizer), overrides, max_seq_len=64)
    assert "\n" not in str(caught.value) and "--config_overrides" in str(caught.value)


def test_a_model_type_without_a_masked_lm_is_refused_with_the_closest_name(bpe_tokenizer: Path) -> None:
    with pytest.raises(UserError, match="did you mean roberta"):
        scratch_config("robertta", str(bpe_tokenizer))
    with pytest.raises(UserError, match="gpt2 has no masked-LM model"):
        scratch_config("gpt2", str(bpe_tokenizer))


# ------------------------------------------------------------------------------------ training from scratch

SCRATCH_TRAINING = {"epochs": 3, "train_batch_size": 16, "learning_rate": 2e-3, "warmup_proportion": 0.1}


def _pregenerated(corpus: Path, tokenizer: Path, output_dir: Path, **options: object) -> Path:
    from bert_domain_ft.data.pregenerate import PregenerateConfig, pregenerate

    config = PregenerateConfig(
        train_corpus=corpus, output_dir=output_dir, tokenizer=str(tokenizer), epochs_to_generate=1, max_seq_len=64,
        holdout_fraction=0.1, show_progress=False, **options,
    )  # fmt: skip
    pregenerate(config)
    return output_dir


def _held_out_losses(output_dir: Path) -> tuple[float, float]:
    from training_helpers import read_metrics

    evaluations = [record for record in read_metrics(output_dir) if record["kind"] == "eval"]
    assert evaluations[0]["step"] == 0 and len(evaluations) >= 2
    assert "nsp_loss" not in evaluations[-1] or evaluations[-1]["nsp_loss"] is not None
    return evaluations[0]["mlm_loss"], evaluations[-1]["mlm_loss"]


def test_a_tiny_roberta_from_scratch_with_a_bpe_tokenizer_learns_and_loads_as_a_masked_lm(
    tiny_corpus: Path, bpe_tokenizer: Path, tmp_path: Path
) -> None:
    """Through the command line, as the issue writes it: pregenerate with --tokenizer, finetune --from_scratch."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from bert_domain_ft.cli import main

    data = tmp_path / "p"
    assert main([
        "pregenerate", "--train_corpus", str(tiny_corpus), "--tokenizer", str(bpe_tokenizer), "--objective", "mlm",
        "--dynamic_masking", "--max_seq_len", "64", "--epochs_to_generate", "1", "--holdout_fraction", "0.1",
        "--output_dir", str(data), "--no_progress",
    ]) == 0  # fmt: skip
    flags = [f"--{key}={value}" for key, value in SCRATCH_TRAINING.items()]
    assert main([
        "finetune", "--pregenerated_data", str(data), "--from_scratch", "--model_type", "roberta",
        "--tokenizer", str(bpe_tokenizer), "--config_overrides", TINY_OVERRIDES, "--output_dir", str(tmp_path / "m"),
        "--no_cuda", "--no_progress", *flags,
    ]) == 0  # fmt: skip
    before, after = _held_out_losses(tmp_path / "m")
    # 6.01 → 4.72 nats when written; a uniform guess over the 400 tokens scores ln 400 = 5.99.
    assert after < before - 0.4 and after < math.log(400) - 0.5, f"held-out MLM loss {before:.3f} → {after:.3f}"
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "m")
    assert type(model).__name__ == "RobertaForMaskedLM" and model.config.hidden_size == 64
    assert AutoTokenizer.from_pretrained(tmp_path / "m").mask_token == "<mask>"
    results = tmp_path / "evaluation.json"
    evaluate = ["evaluate", "--model", str(tmp_path / "m"), "--data", str(data), "--tokenizer", str(bpe_tokenizer)]
    assert main([*evaluate, "--json", str(results), "--no_progress"]) == 0
    written = json.loads(results.read_text())
    assert written["mlm_loss"] == pytest.approx(after, rel=1e-4) and written["nsp_accuracy"] is None


def test_a_tiny_bert_from_scratch_with_a_wordpiece_tokenizer_learns_mlm_and_nsp(
    tiny_corpus: Path, wordpiece_tokenizer: Path, tmp_path: Path
) -> None:
    from training_helpers import read_metrics
    from transformers import AutoModelForMaskedLM, BertForPreTraining

    from bert_domain_ft.training.config import FinetuneConfig
    from bert_domain_ft.training.recipe import finetune

    data = _pregenerated(tiny_corpus, wordpiece_tokenizer, tmp_path / "p")  # auto: a WordPiece tokenizer → NSP
    config = FinetuneConfig(
        pregenerated_data=data, output_dir=tmp_path / "m", from_scratch=True, model_type="bert",
        tokenizer=str(wordpiece_tokenizer), config_overrides=TINY_OVERRIDES, show_progress=False, no_cuda=True,
        **SCRATCH_TRAINING,
    )  # fmt: skip
    finetune(config)
    before, after = _held_out_losses(tmp_path / "m")
    # 5.32 → 4.66 nats when written; a uniform guess over the 200 tokens scores ln 200 = 5.30.
    assert after < before - 0.4 and after < math.log(200) - 0.5, f"held-out MLM loss {before:.3f} → {after:.3f}"
    assert any("nsp_loss" in record for record in read_metrics(tmp_path / "m") if record["kind"] == "train")
    assert type(AutoModelForMaskedLM.from_pretrained(tmp_path / "m")).__name__ == "BertForMaskedLM"
    assert BertForPreTraining.from_pretrained(tmp_path / "m").config.vocab_size == 200


def test_a_model_without_an_nsp_head_on_nsp_data_trains_masked_lm_only_with_a_notice(
    tiny_corpus: Path, wordpiece_tokenizer: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from training_helpers import read_metrics

    from bert_domain_ft.training.config import FinetuneConfig
    from bert_domain_ft.training.recipe import finetune

    data = _pregenerated(tiny_corpus, wordpiece_tokenizer, tmp_path / "p")
    config = FinetuneConfig(
        pregenerated_data=data, output_dir=tmp_path / "m", from_scratch=True, model_type="distilbert",
        tokenizer=str(wordpiece_tokenizer), config_overrides="hidden_size=32,num_hidden_layers=1,num_attention_heads=2",
        stop_after_steps=2, logging_steps=1, do_eval=False, show_progress=False, no_cuda=True,
    )  # fmt: skip
    with caplog.at_level(logging.INFO):
        finetune(config)
    notices = [record.getMessage() for record in caplog.records if "objective: masked LM only" in record.getMessage()]
    assert len(notices) == 1 and "distilbert" in notices[0]
    records = [record for record in read_metrics(tmp_path / "m") if record["kind"] == "train"]
    assert records and all("nsp_loss" not in record for record in records)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--from_scratch", "--model_type", "roberta"], "--tokenizer"),
        (["--from_scratch", "--tokenizer", "tok"], "--model_type"),
        (["--from_scratch", "--model_type", "roberta", "--tokenizer", "t", "--bert_model", "m"], "drop --bert_model"),
        (["--bert_model", "m", "--model_type", "roberta"], "add --from_scratch"),
        ([], "give --bert_model"),
    ],
)
def test_contradictory_model_flags_are_one_line_errors(flags: list[str], message: str, capsys, tmp_path: Path) -> None:
    from bert_domain_ft.cli import main

    status = main(["finetune", "--pregenerated_data", str(tmp_path), "--output_dir", str(tmp_path / "o"), *flags])
    error = capsys.readouterr().err
    assert status == 2 and message in error and "Traceback" not in error
