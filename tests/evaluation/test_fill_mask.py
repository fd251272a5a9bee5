"""fill-mask: each model's top predictions side by side, for given texts and for held-out sentences."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from tiny_assets import WORDS
from training_helpers import make_pregenerated, quick_config, run_cli

from bert_domain_ft.cli import main
from bert_domain_ft.evaluation.config import FillMaskConfig
from bert_domain_ft.evaluation.fill_mask import fill_masks, format_fill_mask
from bert_domain_ft.training.recipe import finetune


@pytest.fixture(scope="module")
def adapted_run(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, tiny_bert_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("fill_mask")
    data = make_pregenerated(tiny_corpus, tiny_bert_dir, root / "data", epochs=1, holdout_fraction=0.1)
    finetune(quick_config(data, tiny_bert_dir, root / "run", max_steps=2, train_batch_size=16))
    return root / "run"


def test_models_side_by_side_for_given_texts_and_held_out_words(adapted_run: Path, tiny_bert_dir: Path) -> None:
    config = FillMaskConfig(models=[str(tiny_bert_dir), str(adapted_run), "The kernel [MASK] the page."],
                            from_holdout=3, top_k=4, no_cuda=True)  # fmt: skip
    assert config.texts == ["The kernel [MASK] the page."]  # a value with a mask after --models is a text
    texts, results = fill_masks(config)
    assert len(texts) == 4 and [result.label for result in results] == ["tiny_bert0", "run"]
    for item in texts[1:]:  # held out: one whole word of the corpus masked, the rest of the sentence kept
        assert item.text.count("[MASK]") == 1 and item.answer is not None
        assert item.answer.lower() in {word.lower() for word in WORDS}
    for result in results:
        for per_text in result.predictions:
            (top,) = per_text  # one mask per text
            probabilities = [probability for _, probability in top]
            assert (
                len(top) == 4 and probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1
            )
    table = format_fill_mask(texts, results)
    assert table.count("the word was:") == 3 and re.search(r"^rank\s+tiny_bert0\s+run$", table, re.MULTILINE)


def test_an_encoder_without_its_head_is_marked(tiny_encoder_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["fill-mask", "--models", str(tiny_encoder_dir), "a [MASK] of the page", "--top_k", "2", "--no_cuda"]) == 0
    )
    assert "(untrained MLM head)" in capsys.readouterr().out


def test_a_text_without_a_mask_is_one_line(tiny_bert_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fill-mask", "--models", str(tiny_bert_dir), "--no_cuda", "--", "no mask here"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["error: 'no mask here': has no [MASK]; write [MASK] where the word to predict goes"]


def test_from_holdout_without_a_held_out_set_is_one_line(tiny_bert_dir: Path, capsys) -> None:
    assert main(["fill-mask", "--models", str(tiny_bert_dir), "--from_holdout", "2", "--no_cuda"]) == 2
    assert "give --holdout_data DIR" in capsys.readouterr().err


def test_top_k_beyond_the_vocabulary_is_one_line(tiny_bert_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, error, _ = run_cli(
        capsys, ["fill-mask", "--models", str(tiny_bert_dir), "a [MASK] b", "--top_k", "1000000", "--no_cuda"]
    )
    vocabulary = len((tiny_bert_dir / "vocab.txt").read_text(encoding="utf-8").split())
    assert status == 2
    assert (
        error
        == f"error: --top_k 1000000: {tiny_bert_dir} has only {vocabulary} tokens; give --top_k {vocabulary} or less"
    )


def test_a_mask_beyond_the_models_positions_is_one_line(
    tiny_bert_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "the page " * 100 + "[MASK] here"  # the tiny BERT takes 128 positions
    status, error, _ = run_cli(capsys, ["fill-mask", "--models", str(tiny_bert_dir), "--no_cuda", "--", text])
    assert status == 2
    assert error.startswith("error: text 1 ('the page the page") and "its [MASK] is token 202" in error
    assert f"beyond the 128 positions of {tiny_bert_dir}; shorten the text before the mask" in error


def test_from_holdout_beyond_the_held_out_set_says_how_many_it_found(
    adapted_run: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    arguments = ["fill-mask", "--models", str(adapted_run), "--from_holdout", "100000", "--no_cuda"]
    status, _, _ = run_cli(capsys, arguments)
    notices = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert status == 0 and len(notices) == 1
    pattern = r"--from_holdout 100000: the held-out set of \S+ gave only (\d+) sentences with a whole word to mask"
    shown = int(re.match(pattern, notices[0])[1])  # type: ignore[index]
    assert 0 < shown < 100000


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, tiny_encoder_dir: Path) -> Path:
    """A short run from an encoder without heads: it keeps its warmed base as run/base/."""
    root = tmp_path_factory.mktemp("fill_mask_encoder")
    data = make_pregenerated(tiny_corpus, tiny_encoder_dir, root / "data", epochs=1, holdout_fraction=0.1)
    finetune(quick_config(data, tiny_encoder_dir, root / "run", max_steps=8, head_warmup_steps=4, train_batch_size=16))
    return root / "run"


def test_a_run_is_compared_with_its_warmed_base_not_a_random_head(
    encoder_run: Path, tiny_encoder_dir: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    base = encoder_run / "base"
    arguments = ["fill-mask", "--models", str(base), str(encoder_run), "a [MASK] of the page", "--top_k", "2"]
    assert main([*arguments, "--no_cuda"]) == 0
    output = capsys.readouterr().out
    assert re.search(r"^rank\s+base\s+run$", output, re.MULTILINE) and "(untrained MLM head)" not in output
    with caplog.at_level("WARNING"):  # the raw encoder beside the run: the warmed base is named, in one line
        assert (
            main(["fill-mask", "--models", str(tiny_encoder_dir), str(encoder_run), "a [MASK] cache", "--no_cuda"]) == 0
        )
    hints = [record.getMessage() for record in caplog.records if "its column is noise" in record.getMessage()]
    assert hints == [
        f"{tiny_encoder_dir} has no trained masked-LM head, so its column is noise; {base} is it with the head "
        f"trained alone by finetune (head-only steps, encoder unchanged): compare --models {base} {encoder_run}"
    ]
