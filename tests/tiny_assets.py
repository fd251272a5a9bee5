"""Tiny, deterministic test assets: a WordPiece vocabulary, a synthetic corpus, and 2-layer BERTs.

Everything is generated from a seed in a few hundred milliseconds, so tests need no download and no ../shared.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "the a of to and in is it that for on with as was by be at this are from or an which can not one all "
    "kernel module driver memory page cache lock thread process file system device buffer queue timer "
    "patient dose clinical note report court contract clause data model token layer value function "
    "read write open close start stop call return run load save check map list set get send walk talk "
    "fast slow new old small large first last each every other some many more most when then if so"
).split()
SUFFIXES = ["##s", "##ed", "##ing", "##er", "##ly"]
PUNCTUATION = [".", ",", ";", ":", "?", "!", "(", ")", "-", "'"]


def vocabulary() -> list[str]:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = letters + ["##" + letter for letter in letters] + [str(digit) for digit in range(10)]
    ordered = SPECIAL_TOKENS + PUNCTUATION + pieces + WORDS + SUFFIXES
    return list(dict.fromkeys(ordered))  # "a" is both a letter and a word: ids must stay dense


def write_tokenizer(directory: Path) -> Path:
    """A lower-casing WordPiece (BERT) fast tokenizer saved with ``save_pretrained``."""
    from transformers import BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(vocabulary()) + "\n", encoding="utf-8")
    try:  # transformers 5 takes the vocabulary itself
        tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocabulary())}, do_lower_case=True)
    except TypeError:  # transformers 4 reads vocab.txt
        tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)
    tokenizer.save_pretrained(str(directory))
    return directory


def synthetic_sentence(rng: random.Random) -> str:
    words = []
    for _ in range(rng.randint(3, 14)):
        word = rng.choice(WORDS)
        if rng.random() < 0.25:
            word += rng.choice(["s", "ed", "ing", "er", "ly"])  # several WordPiece pieces: whole-word tests
        words.append(word)
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice([".", ".", ".", "?", "!"])


def write_corpus(
    path: Path, num_documents: int = 120, seed: int = 0, min_sentences: int = 1, max_sentences: int = 12
) -> Path:
    """A corpus in the corpus format; documents have ``min_sentences``..``max_sentences`` sentences."""
    rng = random.Random(seed)
    documents = []
    for _ in range(num_documents):
        count = rng.randint(min_sentences, max_sentences)
        documents.append("\n".join(synthetic_sentence(rng) for _ in range(count)))
    path.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    return path


def tiny_bert_config(vocab_size: int, max_position_embeddings: int = 128):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=max_position_embeddings,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )


def write_tiny_bert(directory: Path, with_heads: bool = True, seed: int = 0) -> Path:
    """A random 2-layer, hidden-64 BERT and its tokenizer. ``with_heads=False`` saves an encoder-only BertModel."""
    import torch
    from transformers import BertForPreTraining, BertModel

    write_tokenizer(directory)
    torch.manual_seed(seed)
    config = tiny_bert_config(len(vocabulary()))
    model = BertForPreTraining(config) if with_heads else BertModel(config)
    model.save_pretrained(str(directory), safe_serialization=True)
    return directory


def write_tiny_masked_lm(directory: Path, seed: int = 0) -> Path:
    """The tiny BERT saved as ``BertForMaskedLM`` (no pooler, no NSP head), as run_mlm-style training saves one."""
    import torch
    from transformers import BertForMaskedLM

    write_tokenizer(directory)
    torch.manual_seed(seed)
    BertForMaskedLM(tiny_bert_config(len(vocabulary()))).save_pretrained(str(directory), safe_serialization=True)
    return directory


# A sentence-transformers model's own files (as all-MiniLM-L6-v2 has them): the encoder at the top, mean pooling.
SENTENCE_TRANSFORMERS_FILES = {
    "modules.json": '[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}, '
    '{"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}, '
    '{"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]\n',
    "sentence_bert_config.json": '{"max_seq_length": 64, "do_lower_case": true}\n',
    "config_sentence_transformers.json": '{"__version__": {"sentence_transformers": "2.0.0"}}\n',
    "1_Pooling/config.json": '{"word_embedding_dimension": 64, "pooling_mode_mean_tokens": true}\n',
}


def write_sentence_encoder(directory: Path) -> Path:
    """The tiny encoder-only BERT with the files of a sentence-transformers model (``SENTENCE_TRANSFORMERS_FILES``;
    ``2_Normalize`` has none, as in all-MiniLM-L6-v2) and a README of its own."""
    write_tiny_bert(directory, with_heads=False)
    for name, text in SENTENCE_TRANSFORMERS_FILES.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text, encoding="utf-8")
    (directory / "README.md").write_text("# the base model's own card\n", encoding="utf-8")
    return directory


def write_tiny_roberta_encoder(root: Path, corpus: Path) -> Path:
    """An encoder-only RoBERTa (no MLM head, like many published checkpoints) with a BPE tokenizer trained on
    ``corpus``; returns the model directory."""
    import shutil

    import torch
    from transformers import AutoConfig, RobertaModel

    from bert_domain_ft.corpus.config import TokenizerTrainingConfig
    from bert_domain_ft.corpus.tokenizer_training import train_tokenizer

    tokenizer = train_tokenizer(
        TokenizerTrainingConfig(corpus=corpus, output=root / "tok", kind="bpe", vocab_size=400, show_progress=False)
    )
    config = AutoConfig.for_model(
        "roberta", vocab_size=400, max_position_embeddings=66, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    )  # fmt: skip
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(root / "model")
    for path in tokenizer.iterdir():
        shutil.copy(path, root / "model" / path.name)
    return root / "model"


TASK_LABELS = ("xqzpositive", "xqznegative")  # label strings that no synthetic sentence contains


def write_task_file(
    path: Path, num_rows: int = 40, seed: int = 0, min_sentences: int = 1, max_sentences: int = 3
) -> Path:
    """A labelled task file, by extension: CSV/TSV (``label``, ``text`` columns) or JSON lines (``text``, ``label``
    keys); any other extension is plain text, one row per line. Rows hold ``min..max_sentences`` sentences."""
    import csv
    import json

    rng = random.Random(seed)
    rows = [
        (
            " ".join(synthetic_sentence(rng) for _ in range(rng.randint(min_sentences, max_sentences))),
            rng.choice(TASK_LABELS),
        )
        for _ in range(num_rows)
    ]
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter="," if suffix == ".csv" else "\t")
            writer.writerow(["label", "text"])
            writer.writerows((label, text) for text, label in rows)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in rows), "utf-8")
    else:
        path.write_text("".join(text + "\n" for text, _ in rows), encoding="utf-8")
    return path


# Three classes the tiny vocabulary (this file) can tell apart by their words.
CLASS_WORDS = {
    "systems": "kernel module driver memory page cache lock thread process device buffer queue timer".split(),
    "records": "patient dose clinical note report court contract clause".split(),
    "actions": "read write open close start stop call return run load save check send walk talk".split(),
}
COMMON_WORDS = "the a of to and in is it that for on with".split()


def labelled_rows(per_class: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for label, words in CLASS_WORDS.items():
        for _ in range(per_class):
            sentence = [rng.choice(words) for _ in range(rng.randint(3, 6))] + rng.sample(COMMON_WORDS, 2)
            rng.shuffle(sentence)
            rows.append((" ".join(sentence), label))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def small_probe_files(directory: Path) -> tuple[Path, Path]:
    """A train (8 per class) and a test (4 per class) CSV in ``directory``: enough for a quick probe in a run."""
    return write_csv(directory / "train.csv", labelled_rows(8, seed=1)), write_csv(
        directory / "test.csv", labelled_rows(4, seed=2)
    )
