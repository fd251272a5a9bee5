"""Shared fixtures: tiny tokenizer, corpus and BERTs (see tests/tiny_assets.py), built once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tiny_assets  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_assets.write_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BertForPreTraining (MLM + NSP heads), 2 layers, hidden 64, with its tokenizer."""
    return tiny_assets.write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), with_heads=True)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An encoder-only BertModel (no pretraining heads), like sentence-transformers checkpoints."""
    return tiny_assets.write_tiny_bert(tmp_path_factory.mktemp("tiny_encoder"), with_heads=False)


@pytest.fixture(scope="session")
def sentence_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The encoder-only BertModel with a sentence-transformers model's files (modules.json, 1_Pooling/…)."""
    return tiny_assets.write_sentence_encoder(tmp_path_factory.mktemp("sentence_encoder"))


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_assets.write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="session")
def roberta_encoder_dir(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An encoder-only RoBERTa (no MLM head) with a BPE tokenizer of its own, for the MLM-only paths."""
    return tiny_assets.write_tiny_roberta_encoder(tmp_path_factory.mktemp("roberta"), tiny_corpus)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> None:
    """Tiny models gain nothing from a second thread and lose a lot when the cores are shared (OpenMP threads
    wait on each other: up to 30× slower on a busy machine). Set once for the whole session: no test raises it."""
    import torch

    torch.set_num_threads(1)
