"""Saving a trained model: a BERT trained on masked LM only is written as BertForMaskedLM (no untrained NSP head)
and loads with AutoModelForMaskedLM with no key missing or unexpected; a pooler the base stored is kept for the
classifiers; runs with NSP stay BertForPreTraining; the base's sentence-transformers files come along."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_assets
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

from bert_domain_ft.model.loading import load_model_for_objective
from bert_domain_ft.model.saving import SaveFormat, save_model, sentence_transformers_entries, unsaved_parameter_names

POOLER = {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}


def saved(base: Path, directory: Path, with_nsp: bool) -> Path:
    """``base`` loaded for training ("nsp" or "mlm", as finetune loads it) and saved into ``directory``."""
    model = load_model_for_objective(str(base), "nsp" if with_nsp else "mlm").model
    directory.mkdir()
    save_model(model, directory, None, SaveFormat(with_nsp=with_nsp, base_model=str(base)))
    return directory


def architectures(directory: Path) -> list[str]:
    return json.loads((directory / "config.json").read_text(encoding="utf-8"))["architectures"]


def test_an_mlm_only_bert_loads_as_masked_lm_with_no_missing_or_unexpected_key(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    base = tiny_assets.write_tiny_masked_lm(tmp_path / "base")  # no pooler and no NSP head, as run_mlm saves one
    output = saved(base, tmp_path / "run", with_nsp=False)  # trained as BertForPreTraining: fresh pooler and NSP head
    assert architectures(output) == ["BertForMaskedLM"]
    capfd.readouterr()
    model, info = AutoModelForMaskedLM.from_pretrained(output, output_loading_info=True)
    assert type(model).__name__ == "BertForMaskedLM"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert "LOAD REPORT" not in capfd.readouterr().err  # transformers prints no table of keys
    weights, base_weights = load_file(str(output / "model.safetensors")), load_file(str(base / "model.safetensors"))
    assert weights.keys() == base_weights.keys()


def test_a_pooler_the_base_stored_is_kept_for_classifiers_and_the_nsp_head_is_not(
    tmp_path: Path, tiny_encoder_dir: Path
) -> None:
    output = saved(tiny_encoder_dir, tmp_path / "run", with_nsp=False)
    weights = load_file(str(output / "model.safetensors"))
    assert architectures(output) == ["BertForMaskedLM"] and not any(name.startswith("cls.seq_rel") for name in weights)
    _, info = AutoModelForMaskedLM.from_pretrained(output, output_loading_info=True)
    assert not info["missing_keys"] and info["unexpected_keys"] == POOLER  # the only keys it names: kept on purpose
    classifier = AutoModelForSequenceClassification.from_pretrained(output, num_labels=2)
    base_pooler = load_file(str(tiny_encoder_dir / "model.safetensors"))["pooler.dense.weight"]
    assert torch.equal(classifier.bert.pooler.dense.weight, base_pooler)  # the base's pooler, which classifiers read


def test_a_run_with_nsp_is_saved_whole_as_bert_for_pretraining(tmp_path: Path, tiny_bert_dir: Path) -> None:
    output = saved(tiny_bert_dir, tmp_path / "run", with_nsp=True)
    assert architectures(output) == ["BertForPreTraining"]
    assert {"cls.seq_relationship.weight", *POOLER} <= load_file(str(output / "model.safetensors")).keys()


def test_what_is_left_out_is_named_for_resuming(tiny_bert_dir: Path, tmp_path: Path) -> None:
    with_pooler = load_model_for_objective(str(tiny_bert_dir), "mlm").model
    mlm_only = SaveFormat(with_nsp=False, base_model=str(tiny_bert_dir))
    assert unsaved_parameter_names(with_pooler, mlm_only) == {
        "cls.seq_relationship.weight",
        "cls.seq_relationship.bias",
    }
    assert unsaved_parameter_names(with_pooler, SaveFormat(with_nsp=True, base_model=str(tiny_bert_dir))) == set()
    base = tiny_assets.write_tiny_masked_lm(tmp_path / "base")
    fresh_pooler = load_model_for_objective(str(base), "mlm").model
    left_out = unsaved_parameter_names(fresh_pooler, SaveFormat(with_nsp=False, base_model=str(base)))
    assert left_out == {"cls.seq_relationship.weight", "cls.seq_relationship.bias", *POOLER}


def test_the_sentence_transformers_files_of_the_base_come_along(tmp_path: Path, sentence_encoder_dir: Path) -> None:
    output = saved(sentence_encoder_dir, tmp_path / "run", with_nsp=False)
    for name, text in tiny_assets.SENTENCE_TRANSFORMERS_FILES.items():
        assert (output / name).read_text(encoding="utf-8") == text, name
    assert not (output / "README.md").exists()  # the base's card is not this model's


TRANSFORMER = "sentence_transformers.models.Transformer"


@pytest.mark.parametrize(
    ("modules", "expected"),
    [
        ([{"path": "0_Transformer", "type": TRANSFORMER}], []),  # the encoder's files there are the base's weights
        ([{"path": "", "type": TRANSFORMER}, {"path": "../outside", "type": "x"}], ["modules.json"]),
        ("not a list of modules", []),
    ],
)
def test_sentence_transformers_files_that_do_not_fit_are_left_behind(
    tmp_path: Path, modules: object, expected: list[str]
) -> None:
    (tmp_path / "outside").mkdir()
    base = tmp_path / "base"
    base.mkdir()
    (base / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    assert sentence_transformers_entries(base) == expected  # never a folder outside the model
