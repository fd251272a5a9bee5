"""``prepare``: raw text in, the corpus format out — splitting, document mapping, normalisation, dedup, safety."""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from training_helpers import run_cli

from bert_domain_ft.cli import build_parser, main
from bert_domain_ft.corpus import reading as text_inputs
from bert_domain_ft.corpus.check import check_corpus
from bert_domain_ft.corpus.config import PrepareConfig
from bert_domain_ft.corpus.prepare import normalise_text, prepare_corpus
from bert_domain_ft.corpus.reading import iter_documents
from bert_domain_ft.corpus.sentences import (
    SentenceSplitter,
    load_punkt_parameters,
    punkt_parameters_from_json,
    punkt_parameters_to_json,
    split_long_sentence,
)
from bert_domain_ft.errors import UserError

SUBJECTS = ["The specimen", "Each sample", "The cortex", "This layer", "The membrane", "Our probe", "The tissue"]
VERBS = ["measured", "showed", "reached", "grew to", "shrank to", "kept", "lost", "gained"]
NOUNS = ["actin", "tubulin", "keratin", "collagen", "elastin", "myosin", "laminin", "fibrin"]
TAILS = ["after staining", "under the microscope", "within two hours", "at room temperature", "in every trial"]
TAILS += ["without any treatment", "during the second week", "near the outer edge", "before fixation"]
# Abbreviations inside sentences: an untrained splitter cuts after each of them.
PROBE = "The tissue in Fig. 3 measured approx. 5 mm near the edge. Markers, e.g. actin and myosin, kept their shape."
PROBE_SENTENCES = PROBE.replace("edge. ", "edge.\n").splitlines()


def domain_sentence(rng: random.Random) -> str:
    subject, verb, tail = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(TAILS)
    kind = rng.randrange(4)
    if kind == 0:
        return f"{subject} in Fig. {rng.randint(1, 9)} {verb} approx. {rng.randint(2, 40)} mm {tail}."
    if kind == 1:
        return f"{subject} {verb} several markers, e.g. {rng.choice(NOUNS)} and {rng.choice(NOUNS)}, {tail}."
    if kind == 2:
        return f"As Fig. {rng.randint(1, 9)} shows, {subject.lower()} {verb} {rng.choice(NOUNS)} {tail}."
    return f"{subject} {verb} {rng.choice(NOUNS)} {tail}."


def domain_documents(count: int = 30, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    return [[domain_sentence(rng) for _ in range(rng.randint(5, 9))] for _ in range(count)]


def write_raw_files(directory: Path, documents: list[list[str]]) -> Path:
    """One file per document, its sentences run together and hard-wrapped at 70 columns like real prose."""
    directory.mkdir(parents=True, exist_ok=True)
    for index, sentences in enumerate(documents):
        (directory / f"{index:02d}.txt").write_text(textwrap.fill(" ".join(sentences), 70) + "\n", encoding="utf-8")
    return directory


def corpus_documents(path: Path) -> list[list[str]]:
    return [[line.text for line in document] for document in iter_documents(path)]


def prepare(tmp_path: Path, *inputs: Path, name: str = "corpus.txt", **options: object):
    config = PrepareConfig(inputs=inputs, output=tmp_path / name, show_progress=False, **options)
    return prepare_corpus(config), config.output


@pytest.fixture()
def domain_raw(tmp_path: Path) -> tuple[Path, list[list[str]]]:
    documents = domain_documents()
    return write_raw_files(tmp_path / "raw", documents), documents


def test_abbreviations_learned_from_the_domain_do_not_split_sentences(tmp_path, domain_raw):
    raw, documents = domain_raw
    report, output = prepare(tmp_path, raw)
    assert corpus_documents(output) == documents
    assert report.documents_written == 30 and report.sentences_written == sum(map(len, documents))
    learned = set(json.loads(output.with_name("corpus.txt.punkt.json").read_text())["abbreviations"])
    assert {"fig", "approx", "e.g"} <= learned
    assert SentenceSplitter(load_punkt_parameters(Path(report.punkt_parameters))).split(PROBE) == PROBE_SENTENCES


def test_without_training_punkt_would_split_inside_those_sentences():
    from nltk.tokenize.punkt import PunktParameters

    pieces = SentenceSplitter(PunktParameters()).split(PROBE)
    assert len(pieces) > len(PROBE_SENTENCES)
    assert "The tissue in Fig." in pieces


def test_saved_punkt_parameters_are_json_and_reproduce_the_same_split(tmp_path, domain_raw):
    raw, _ = domain_raw
    report, first = prepare(tmp_path, raw)
    saved = json.loads(Path(report.punkt_parameters).read_text(encoding="utf-8"))
    assert saved["format"] == "bert_domain_ft.punkt" and saved["provenance"]["source"] == "trained"
    assert punkt_parameters_to_json(punkt_parameters_from_json(saved, Path("x"))) == {
        key: value for key, value in saved.items() if key != "provenance"
    }
    reused, second = prepare(tmp_path, raw, name="again.txt", punkt=report.punkt_parameters, punkt_sample_bytes=10)
    assert second.read_bytes() == first.read_bytes()
    assert reused.punkt_source.startswith("loaded from")


def test_a_damaged_punkt_file_is_a_user_error(tmp_path, domain_raw):
    raw, _ = domain_raw
    damaged = tmp_path / "bad.punkt.json"
    damaged.write_text(json.dumps({"format": "bert_domain_ft.punkt", "format_version": 1, "abbreviations": [1]}))
    with pytest.raises(UserError, match="bad.punkt.json.*abbreviations"):
        prepare(tmp_path, raw, punkt=str(damaged))


def test_pretrained_punkt_that_is_not_installed_says_how_to_install_it(tmp_path, domain_raw, monkeypatch):
    import nltk.data

    def not_installed(name: str):
        raise LookupError(name)

    monkeypatch.setattr(nltk.data, "find", not_installed)
    with pytest.raises(UserError, match=r"nltk.download\('punkt_tab'\).*--punkt pretrained"):
        prepare(tmp_path, domain_raw[0], punkt="pretrained")


def test_each_file_is_one_document_and_paragraph_mode_makes_each_paragraph_one(tmp_path):
    (tmp_path / "a.txt").write_text("Alpha one is here.\nStill alpha.\n\nAlpha two starts.\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("Beta is short.\n\n\n\nBeta again.\n", encoding="utf-8")
    _, by_file = prepare(tmp_path, tmp_path / "a.txt", tmp_path / "b.txt")
    assert corpus_documents(by_file) == [
        ["Alpha one is here.", "Still alpha.", "Alpha two starts."],
        ["Beta is short.", "Beta again."],
    ]
    _, by_paragraph = prepare(tmp_path, tmp_path / "a.txt", tmp_path / "b.txt", name="p.txt", doc_break="paragraph")
    assert corpus_documents(by_paragraph) == [
        ["Alpha one is here.", "Still alpha."],
        ["Alpha two starts."],
        ["Beta is short."],
        ["Beta again."],
    ]


def test_directories_are_searched_recursively_with_the_glob_in_sorted_order(tmp_path):
    root = tmp_path / "in"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "b" / "deep" / "z.txt").write_text("Third file here.\n")
    (root / "b" / "a.txt").write_text("Second file here.\n")
    (root / "a.txt").write_text("First file here.\n")
    (root / "notes.md").write_text("Not matched by the glob.\n")
    report, output = prepare(tmp_path, root)
    assert report.input_files == 3
    assert corpus_documents(output) == [["First file here."], ["Second file here."], ["Third file here."]]
    _, markdown = prepare(tmp_path, root, name="md.txt", glob="*.md")
    assert corpus_documents(markdown) == [["Not matched by the glob."]]


def test_the_output_inside_an_input_directory_is_never_read_back(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.txt").write_text("Only this file.\n")
    (root / "b.txt").write_text("And this one.\n")
    prepare(root, root)
    report, output = prepare(root, root, overwrite=True)
    assert report.input_files == 2 and corpus_documents(output) == [["Only this file."], ["And this one."]]


def test_json_lines_take_each_records_text_field_as_a_document(tmp_path):
    records = [{"id": 1, "body": "First record. It has two sentences."}, {"id": 2, "body": "Second one.\n\nMore."}]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(record) for record in records) + "\n\n", encoding="utf-8")
    _, output = prepare(tmp_path, path, text_field="body")
    assert corpus_documents(output) == [["First record.", "It has two sentences."], ["Second one.", "More."]]
    _, paragraphs = prepare(tmp_path, path, name="p.txt", text_field="body", doc_break="paragraph")
    assert corpus_documents(paragraphs) == [["First record.", "It has two sentences."], ["Second one."], ["More."]]


@pytest.mark.parametrize(
    ("line", "problem"),
    [("{not json", "not valid JSON"), ('{"title": "x"}', "no 'body' field"), ('{"body": 3}', "not a string")],
)
def test_a_bad_json_line_names_the_file_and_line(tmp_path, line, problem):
    path = tmp_path / "data.jsonl"
    path.write_text('{"body": "Fine."}\n{"body": "Fine too."}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=rf"data\.jsonl:3: .*{problem}"):
        prepare(tmp_path, path, text_field="body")
    assert not (tmp_path / "corpus.txt").exists() and not (tmp_path / "corpus.txt.partial").exists()


def test_exact_duplicate_documents_are_removed_and_counted(tmp_path):
    (tmp_path / "1.txt").write_text("Same text here. Twice over.\n")
    (tmp_path / "2.txt").write_text("Other text.\n")
    (tmp_path / "3.txt").write_text("Same   text\nhere.  Twice over.\n")  # equal once whitespace is collapsed
    (tmp_path / "4.txt").write_text("Same text here. Twice over!\n")  # differs: kept
    report, output = prepare(tmp_path, *sorted(tmp_path.glob("*.txt")))
    assert report.duplicate_documents_removed == 1 and report.documents_written == 3
    assert corpus_documents(output) == [
        ["Same text here.", "Twice over."],
        ["Other text."],
        ["Same text here.", "Twice over!"],
    ]


def test_text_is_nfc_normalised_without_control_characters_and_with_collapsed_whitespace(tmp_path):
    decomposed = "Cafe\u0301 au\tlait\u00a0is  served\x07 hot.\u200b\n"
    (tmp_path / "a.txt").write_text(decomposed, encoding="utf-8")
    (tmp_path / "b.txt").write_text("Second\x0c document.\n", encoding="utf-8")
    _, output = prepare(tmp_path, tmp_path / "a.txt", tmp_path / "b.txt")
    assert corpus_documents(output) == [["Caf\u00e9 au lait is served hot."], ["Second document."]]
    assert normalise_text("A\u030a\r\n\x00b") == "\u00c5 b"


def test_documents_left_without_sentences_are_dropped_and_counted(tmp_path):
    (tmp_path / "a.txt").write_text("Real text.\n")
    (tmp_path / "b.txt").write_text("")
    (tmp_path / "c.txt").write_text("\x01\x02 \t\n\n\u200b\n")
    (tmp_path / "d.txt").write_text("Ok.\n")
    report, output = prepare(tmp_path, *sorted(tmp_path.glob("*.txt")), min_sentence_chars=4)
    assert report.empty_documents_dropped == 3 and report.short_sentences_dropped == 1
    assert corpus_documents(output) == [["Real text."]]
    assert report.warnings and "pregeneration needs at least two" in report.warnings[0]


def test_long_sentences_are_cut_at_a_safe_point_and_counted(tmp_path):
    clauses = [f"clause number {index} says little" for index in range(12)]
    sentence = "; ".join(clauses) + "."
    (tmp_path / "a.txt").write_text(f"{sentence} A short one.\n")
    (tmp_path / "b.txt").write_text("Another document.\n")
    report, output = prepare(tmp_path, tmp_path / "a.txt", tmp_path / "b.txt", max_sentence_chars=100)
    first_document = corpus_documents(output)[0]
    assert report.long_sentences_split == 1 and report.pieces_from_long_sentences == len(first_document) - 1
    assert all(len(piece) <= 100 and piece.endswith((";", ".")) for piece in first_document)
    assert " ".join(first_document[:-1]) == sentence


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=st.sampled_from("ab,; é\u0301x"), min_size=0, max_size=400), st.integers(min_value=2, max_value=60)
)
def test_split_long_sentence_keeps_every_character_and_respects_the_bound(text, bound):
    sentence = " ".join(text.split())
    pieces = split_long_sentence(sentence, bound)
    assert all(0 < len(piece) <= bound for piece in pieces)
    assert "".join("".join(pieces).split()) == "".join(sentence.split())


def test_a_paragraph_longer_than_a_block_is_read_in_pieces_without_changing_the_output(
    tmp_path, domain_raw, monkeypatch
):
    raw, documents = domain_raw
    one_paragraph = tmp_path / "long.txt"
    one_paragraph.write_text(textwrap.fill(" ".join(s for d in documents for s in d), 60) + "\n", encoding="utf-8")
    _, whole = prepare(tmp_path, one_paragraph, raw / "00.txt", name="whole.txt")
    monkeypatch.setattr(text_inputs, "PARAGRAPH_BLOCK_CHARACTERS", 300)
    _, pieces = prepare(tmp_path, one_paragraph, raw / "00.txt", name="pieces.txt", punkt=str(whole) + ".punkt.json")
    assert pieces.read_bytes() == whole.read_bytes()
    assert corpus_documents(pieces)[0] == [s for d in documents for s in d]


@pytest.mark.parametrize("layout", ["one line", "a JSON record"])
def test_a_line_longer_than_a_block_is_read_in_pieces_without_changing_the_output(
    tmp_path, domain_raw, monkeypatch, layout
):
    """A paragraph on one line (or in one record's text) is cut into blocks like a long paragraph of many lines:
    bounded memory, the same corpus; so is a sentence running on over blocks, in the same pieces."""
    raw, documents = domain_raw
    text = " ".join(s for d in documents for s in d)
    text += " " + "; ".join(f"clause number {index} says little" for index in range(40)) + "."
    long_line = tmp_path / ("long.txt" if layout == "one line" else "long.jsonl")
    long_line.write_text(text + "\n" if layout == "one line" else json.dumps({"text": text}) + "\n", "utf-8")
    options = {"max_sentence_chars": 100} | ({} if layout == "one line" else {"text_field": "text", "glob": "*"})
    other = write_raw_files(tmp_path / "other", documents[:1]) / "00.txt"
    if layout != "one line":
        other = other.with_suffix(".jsonl")
        other.write_text(json.dumps({"text": " ".join(documents[0])}) + "\n", encoding="utf-8")
    whole_report, whole = prepare(tmp_path, long_line, other, name="whole.txt", **options)
    monkeypatch.setattr(text_inputs, "PARAGRAPH_BLOCK_CHARACTERS", 300)
    report, pieces = prepare(tmp_path, long_line, other, name="pieces.txt", punkt=f"{whole}.punkt.json", **options)
    assert pieces.read_bytes() == whole.read_bytes()
    assert corpus_documents(pieces)[0][:5] == [s for d in documents for s in d][:5]
    assert report.long_sentences_split == whole_report.long_sentences_split == 1
    assert report.pieces_from_long_sentences == whole_report.pieces_from_long_sentences > 10


@pytest.mark.parametrize("source", ["file", "device"])
def test_a_line_over_the_bound_is_one_line_naming_it_never_read_whole(tmp_path, monkeypatch, capsys, source):
    """`prepare /dev/zero` grew by ~450 MB/s forever; a 100 MB line without breaks was called a full disk."""
    monkeypatch.setattr(text_inputs, "MAX_LINE_BYTES", 1 << 16)
    path = Path("/dev/zero") if source == "device" else tmp_path / "one_line.txt"
    if source == "file":
        path.write_text("Fine first line.\n" + "word " * (1 << 15) + "\n", encoding="utf-8")
    status, error, _ = run_cli(capsys, ["prepare", str(path), "--output", str(tmp_path / "out.txt"), "--no_progress"])
    line = 1 if source == "device" else 2
    problem = "line is longer than 0.0625 MB (a file without line breaks?); write a paragraph a line at most"
    assert (status, error) == (2, f"error: {path}:{line}: {problem}")
    assert not (tmp_path / "out.txt").exists()


def test_punkt_trains_on_a_bounded_sample_and_every_document_is_still_written(tmp_path, domain_raw):
    raw, documents = domain_raw
    report, output = prepare(tmp_path, raw, punkt_sample_bytes=2000)
    trained_bytes = int(report.punkt_source.split()[2])
    assert 2000 <= trained_bytes < 3000
    assert len(corpus_documents(output)) == len(documents)


def test_undecodable_input_names_file_and_line_and_encoding_reads_it(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("First line.\nCaf\u00e9 cr\u00e8me.\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin\.txt:2: .*--encoding"):
        prepare(tmp_path, path)
    _, output = prepare(tmp_path, path, encoding="latin-1")
    assert corpus_documents(output) == [["First line.", "Caf\u00e9 cr\u00e8me."]]


def test_existing_output_needs_overwrite_and_bad_settings_are_refused(tmp_path, domain_raw):
    raw, _ = domain_raw
    prepare(tmp_path, raw)
    with pytest.raises(UserError, match="--overwrite"):
        prepare(tmp_path, raw)
    for bad in ({"doc_break": "line"}, {"encoding": "utf-16"}, {"max_sentence_chars": 5}, {"min_sentence_chars": 0}):
        with pytest.raises(ValueError):
            PrepareConfig(inputs=(raw,), output=tmp_path / "x.txt", **bad)
    with pytest.raises(UserError, match="missing.*not found"):
        prepare(tmp_path, tmp_path / "missing", name="y.txt")


def test_every_flag_of_prepare_and_check_has_a_help_text():
    subparsers = next(action for action in build_parser()._actions if action.dest == "command")
    for command in ("prepare", "check"):
        for action in subparsers.choices[command]._actions:
            assert action.help, f"{command} {action.option_strings or action.dest} has no help"


def test_cli_prepare_writes_the_corpus_and_prints_the_report(tmp_path, domain_raw, capsys):
    raw, _ = domain_raw
    output = tmp_path / "cli.txt"
    assert main(["prepare", str(raw), "--output", str(output), "--no_progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["documents_written"] == 30
    assert main(["prepare", str(raw), "--output", str(output), "--no_progress"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_a_link_planted_at_the_temporary_name_is_never_followed(tmp_path, domain_raw, capsys):
    """`out.txt.partial -> victim`: prepare writes its corpus beside, the victim keeps its bytes."""
    raw, _ = domain_raw
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "out.txt.partial").symlink_to(victim)
    assert main(["prepare", str(raw), "--output", str(tmp_path / "out.txt"), "--no_progress", "--json"]) == 0
    assert victim.read_text() == "precious" and json.loads(capsys.readouterr().out)["documents_written"] == 30


def test_a_temporary_left_beside_the_output_by_a_killed_run_is_not_read_as_input(tmp_path, capsys):
    (tmp_path / "in.txt").write_text("One sentence is here. Another one is there.\n")
    (tmp_path / "out.txt.1a2b3c4d.partial").write_text("Left by a killed run. Never input.\n")
    output = str(tmp_path / "out.txt")
    assert main(["prepare", str(tmp_path), "--glob", "*", "--output", output, "--no_progress", "--json"]) == 0
    assert "killed" not in (tmp_path / "out.txt").read_text() and json.loads(capsys.readouterr().out)


def test_a_prepared_corpus_passes_check_and_pregenerates(tmp_path, domain_raw, tiny_tokenizer_dir):
    from bert_domain_ft.data.pregenerate import PregenerateConfig, pregenerate

    raw, documents = domain_raw
    _, output = prepare(tmp_path, raw)
    report = check_corpus(output, str(tiny_tokenizer_dir), max_seq_len=32)
    assert report.accepted and report.documents_with_text == len(documents)
    manifest = pregenerate(
        PregenerateConfig(
            train_corpus=output,
            output_dir=tmp_path / "pregenerated",
            bert_model=str(tiny_tokenizer_dir),
            epochs_to_generate=1,
            max_seq_len=32,
            show_progress=False,
            holdout_fraction=0.0,
        )
    )
    assert manifest["corpus"]["documents"] == len(documents)
    assert manifest["epochs"][0]["num_instances"] > 0
