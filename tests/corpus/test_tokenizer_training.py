"""Training tokenizers: what both loaders see, the special-token layout, and the refusals of bad settings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import tiny_assets
from training_helpers import run_cli

from bert_domain_ft.cli import main
from bert_domain_ft.corpus.config import KIND_SPECS, KINDS, TokenizerTrainingConfig
from bert_domain_ft.corpus.tokenizer_training import train_tokenizer
from bert_domain_ft.errors import UserError
from bert_domain_ft.model.tokenizer import describe_tokenizer, encode_sentences, load_tokenizer

VOCAB_SIZES = {"wordpiece": 150, "bpe": 320, "unigram": 150}
SENTENCES = [
    ("The Kernel module was loaded.", "Then the driver read every page!"),
    ("  Ünïcode wörds — and   spaces ", "a [MASK] and a <mask> token"),
]


def _config(corpus: Path, output: Path, kind: str, **settings: object) -> TokenizerTrainingConfig:
    values = {"vocab_size": VOCAB_SIZES[kind], "show_progress": False, **settings}
    return TokenizerTrainingConfig(corpus=corpus, output=output, kind=kind, **values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trained_tokenizers")
    return {kind: train_tokenizer(_config(tiny_corpus, root / kind, kind)) for kind in KINDS}


def _auto_tokenizer(directory: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


@pytest.mark.parametrize("kind", KINDS)
def test_both_loaders_report_the_same_special_tokens(trained: dict[str, Path], kind: str) -> None:
    facts = describe_tokenizer(load_tokenizer(str(trained[kind])), str(trained[kind]))
    auto = _auto_tokenizer(trained[kind])
    assert type(auto).__name__ == KIND_SPECS[kind].tokenizer_class
    assert (facts.cls_token_id, facts.sep_token_id, facts.mask_token_id, facts.pad_token_id) == (
        auto.cls_token_id,
        auto.sep_token_id,
        auto.mask_token_id,
        auto.pad_token_id,
    )
    assert set(facts.special_token_ids) == set(auto.all_special_ids) == set(range(5))
    # The special tokens take ids 0-4 in the order of their kind (BERT: [PAD] [UNK] [CLS] [SEP] [MASK]).
    assert auto.convert_ids_to_tokens(list(range(5))) == list(KIND_SPECS[kind].special_tokens)
    assert facts.continuation_prefix == ("##" if kind == "wordpiece" else None)
    assert facts.vocab_size == len(auto) == VOCAB_SIZES[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_both_loaders_tokenize_identically(trained: dict[str, Path], kind: str) -> None:
    fast = load_tokenizer(str(trained[kind]))
    auto = _auto_tokenizer(trained[kind])
    for first, second in SENTENCES:
        assert auto(first, second)["input_ids"] == fast.backend_tokenizer.encode(first, second).ids
        assert encode_sentences(fast, [first, second]) == [
            auto(first, add_special_tokens=False)["input_ids"],
            auto(second, add_special_tokens=False)["input_ids"],
        ]


@pytest.mark.parametrize("kind", KINDS)
def test_a_sentence_pair_gets_the_special_token_layout_of_its_kind(trained: dict[str, Path], kind: str) -> None:
    auto = _auto_tokenizer(trained[kind])
    first, second = SENTENCES[0]
    a = auto(first, add_special_tokens=False)["input_ids"]
    b = auto(second, add_special_tokens=False)["input_ids"]
    pair = auto(first, second)
    cls, sep = auto.cls_token_id, auto.sep_token_id
    if kind == "wordpiece":
        assert pair["input_ids"] == [cls, *a, sep, *b, sep]
        assert pair["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    else:
        assert pair["input_ids"] == [cls, *a, sep, sep, *b, sep]
    assert auto.decode(auto(first)["input_ids"], skip_special_tokens=True).strip() == first


def test_the_mask_token_in_text_is_one_token(trained: dict[str, Path]) -> None:
    for kind, text in (("wordpiece", "a [MASK] b"), ("bpe", "a <mask> b"), ("unigram", "a <mask> b")):
        auto = _auto_tokenizer(trained[kind])
        assert auto(text, add_special_tokens=False)["input_ids"].count(auto.mask_token_id) == 1


def test_a_wordpiece_vocabulary_has_pieces_and_a_bert_vocab_file(trained: dict[str, Path]) -> None:
    vocabulary = (trained["wordpiece"] / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocabulary[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert any(token.startswith("##") and len(token) > 3 for token in vocabulary)  # learned, not just characters
    assert (trained["bpe"] / "merges.txt").exists() and (trained["bpe"] / "vocab.json").exists()


def test_lowercase_makes_an_uncased_wordpiece_and_without_it_case_is_kept(tiny_corpus: Path, tmp_path: Path) -> None:
    for lowercase in (True, False):
        directory = train_tokenizer(_config(tiny_corpus, tmp_path / str(lowercase), "wordpiece", lowercase=lowercase))
        facts = describe_tokenizer(load_tokenizer(str(directory)), str(directory))
        auto = _auto_tokenizer(directory)
        assert facts.do_lower_case is lowercase
        assert json.loads((directory / "tokenizer_config.json").read_text())["do_lower_case"] is lowercase
        same = auto("KERNEL Module")["input_ids"] == auto("kernel module")["input_ids"]
        assert same is lowercase


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_lowercase_is_refused_where_transformers_would_drop_it(tmp_path: Path, kind: str) -> None:
    with pytest.raises(ValueError, match="--lowercase applies to --kind wordpiece only"):
        TokenizerTrainingConfig(corpus=tmp_path / "c.txt", output=tmp_path / "o", kind=kind, lowercase=True)


@pytest.mark.parametrize(("kind", "minimum"), [("bpe", 261), ("wordpiece", 6), ("unigram", 6)])
def test_a_vocab_size_below_special_tokens_plus_alphabet_is_refused(tmp_path: Path, kind: str, minimum: int) -> None:
    with pytest.raises(ValueError, match=f"at least {minimum}"):
        TokenizerTrainingConfig(corpus=tmp_path / "c.txt", output=tmp_path / "o", kind=kind, vocab_size=minimum - 1)
    TokenizerTrainingConfig(corpus=tmp_path / "c.txt", output=tmp_path / "o", kind=kind, vocab_size=minimum)


@pytest.mark.parametrize("kind", ["wordpiece", "unigram"])
def test_a_vocab_size_too_small_for_the_corpus_names_a_size_that_works(
    tiny_corpus: Path, tmp_path: Path, kind: str
) -> None:
    with pytest.raises(UserError, match="raise --vocab_size") as caught:
        train_tokenizer(_config(tiny_corpus, tmp_path / "small", kind, vocab_size=20))
    needed = int(re.search(r"needs (?:about )?(\d+)", str(caught.value)).group(1))  # type: ignore[union-attr]
    assert not (tmp_path / "small").exists()
    directory = train_tokenizer(_config(tiny_corpus, tmp_path / "enough", kind, vocab_size=needed))
    assert len(_auto_tokenizer(directory)) <= needed


def test_bad_corpora_give_one_line_user_errors(tmp_path: Path) -> None:
    empty, blank, latin1 = tmp_path / "empty.txt", tmp_path / "blank.txt", tmp_path / "latin1.txt"
    empty.write_bytes(b"")
    blank.write_bytes(b"\n  \n\n")
    latin1.write_bytes(b"fine line\ncaf\xe9 au lait\n")
    expectations = {
        tmp_path / "missing.txt": "not found",
        empty: "corpus is empty",
        blank: "no text",
        latin1: r"latin1.txt:2: byte 4 .* not valid UTF-8",
    }
    for corpus, message in expectations.items():
        with pytest.raises(UserError, match=message) as caught:
            train_tokenizer(_config(corpus, tmp_path / "out", "wordpiece"))
        assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_an_output_directory_holding_files_is_replaced_only_with_overwrite(tiny_corpus: Path, tmp_path: Path) -> None:
    output = tmp_path / "tokenizer"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already holds files; pass --overwrite"):
        train_tokenizer(_config(tiny_corpus, output, "bpe"))
    assert (output / "notes.txt").read_text() == "mine"
    train_tokenizer(_config(tiny_corpus, output, "bpe", overwrite=True))
    assert not (output / "notes.txt").exists() and (output / "tokenizer.json").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tokenizer"]  # no .partial left behind


def test_overwrite_never_deletes_the_corpus_inside_the_output(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    corpus = tiny_assets.write_corpus(tmp_path / "work" / "corpus.txt", num_documents=10)
    with pytest.raises(UserError, match="holds the corpus"):
        train_tokenizer(_config(corpus, tmp_path / "work", "bpe", overwrite=True))
    assert corpus.exists()


def test_the_command_trains_and_reports_errors_in_one_line(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "cli_tokenizer"
    arguments = ["tokenizer", str(tiny_corpus), "--output", str(output), "--kind", "unigram", "--no_progress"]
    assert main([*arguments, "--vocab_size", "150"]) == 0
    record = json.loads((output / "tokenizer_training.json").read_text())
    assert record["kind"] == "unigram" and record["trained_vocab_size"] == 150
    capsys.readouterr()
    assert main([*arguments, "--vocab_size", "150"]) == 2  # output now holds files
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error and "--overwrite" in error


def test_pregenerate_uses_a_trained_wordpiece_tokenizer(trained: dict[str, Path], tiny_corpus: Path, tmp_path: Path):
    from bert_domain_ft.data.pregenerate import PregenerateConfig, pregenerate

    config = PregenerateConfig(
        train_corpus=tiny_corpus,
        output_dir=tmp_path / "pregenerated",
        bert_model=str(trained["wordpiece"]),
        epochs_to_generate=1,
        max_seq_len=32,
        show_progress=False,
        holdout_fraction=0.0,
    )
    manifest = pregenerate(config)
    facts = describe_tokenizer(load_tokenizer(str(trained["wordpiece"])), str(trained["wordpiece"]))
    assert manifest["tokenizer"]["vocab_fingerprint"] == facts.vocab_fingerprint
    assert manifest["tokenizer"]["mask_token_id"] == facts.mask_token_id
    assert manifest["epochs"][0]["num_instances"] > 0


def test_a_vocab_size_no_model_could_use_is_one_line_not_a_rust_abort(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The trainer aborts the whole process (SIGABRT, a Rust backtrace) on sizes it cannot allocate."""
    arguments = ["tokenizer", str(tiny_corpus), "--output", str(tmp_path / "o"), "--no_progress"]
    status, error, _ = run_cli(capsys, [*arguments, "--vocab_size", "1000000000"])
    assert status == 2 and "--vocab_size 1,000,000,000 is above 1,000,000" in error
    assert not (tmp_path / "o").exists()
