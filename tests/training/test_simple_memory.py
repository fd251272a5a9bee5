"""Without --on_memory the simple stage keeps only the corpus index in RAM: resident memory does not grow with
the tokens. Measured in fresh processes over a whole epoch of batches from on-disk token stores (12 and 96 MB)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SENTENCES_PER_DOCUMENT = 10
NUM_SENTENCES = 60_000  # two stores of this many sentences: 100 tokens each (12 MB) and 800 each (96 MB)

_MEASURE = """
import json, sys
from pathlib import Path
import numpy as np
from bert_domain_ft.data.document_store import DocumentStore, open_document_store
from bert_domain_ft.data.masking import DynamicMasking
from bert_domain_ft.data.masking import MaskingTables
from bert_domain_ft.data.instances import RowLayout
from bert_domain_ft.training.simple import SentencePairSource

BATCH = 64

def resident_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

directory, on_memory = Path(sys.argv[1]), sys.argv[2] == "ram"
special = np.zeros(1005, dtype=bool); special[:5] = True
tables = MaskingTables(special, np.zeros(1005, bool), np.flatnonzero(~special), 4)
layout, masking = RowLayout(128, 2, 3, 0), DynamicMasking(tables, 0.15, 20, whole_word=False, seed=0)
# Warm up on a tiny store first, so that code paged in by the first batch is not counted as data.
tiny = DocumentStore(np.arange(5, 105, dtype=np.uint16), np.arange(0, 101, 10), np.array([0, 5, 10]))
SentencePairSource(tiny, layout, masking, global_batch_size=BATCH).open_epoch(0)(np.arange(8))
baseline = resident_mb()
store = open_document_store(directory)
if on_memory:
    store = DocumentStore(np.array(store.tokens), store.sentence_offsets, store.document_offsets)
source = SentencePairSource(store, layout, masking, global_batch_size=BATCH)
fetch, size = source.open_epoch(0), source.epoch_size(0)
fetch(np.arange(BATCH))
after_first_batch = peak = resident_mb()
for start in range(BATCH, size, BATCH):
    batch = fetch(np.arange(start, min(size, start + BATCH)))
    peak = max(peak, resident_mb())
report = {"growth_mb": peak - baseline, "epoch_growth_mb": peak - after_first_batch, "batches": -(-size // BATCH)}
print(json.dumps(report))
"""


def write_store(directory: Path, sentence_tokens: int) -> int:
    """An on-disk document store as ``build_document_store`` writes it; returns the token file's size in bytes."""
    directory.mkdir()
    tokens = (np.arange(NUM_SENTENCES * sentence_tokens, dtype=np.int64) % 1000 + 5).astype(np.uint16)
    np.save(directory / "tokens.npy", tokens)
    np.save(directory / "sentence_offsets.npy", np.arange(NUM_SENTENCES + 1, dtype=np.int64) * sentence_tokens)
    documents = NUM_SENTENCES // SENTENCES_PER_DOCUMENT
    np.save(directory / "document_offsets.npy", np.arange(documents + 1, dtype=np.int64) * SENTENCES_PER_DOCUMENT)
    description = {
        "dropped_empty_sentences": 0,
        "dropped_empty_documents": 0,
        "corpus_document_offsets": [0, documents],
    }
    (directory / "store.json").write_text(json.dumps(description))
    return tokens.nbytes


def measure(directory: Path, mode: str) -> dict[str, float]:
    completed = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(directory), mode], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_without_on_memory_resident_memory_grows_with_sentences_not_tokens(tmp_path: Path) -> None:
    short_megabytes = write_store(tmp_path / "short", sentence_tokens=100) / 2**20
    long_megabytes = write_store(tmp_path / "long", sentence_tokens=800) / 2**20
    short, long = measure(tmp_path / "short", "disk"), measure(tmp_path / "long", "disk")
    in_memory = measure(tmp_path / "long", "ram")
    assert long["batches"] > 800  # a whole epoch: every sentence read, random partners all over the file
    assert in_memory["growth_mb"] > 0.9 * long_megabytes  # the measurement sees tokens held in RAM
    # 8x the tokens, same sentences: the same memory (the index, one epoch's pairs, one batch's working set)...
    assert abs(long["growth_mb"] - short["growth_mb"]) < 0.05 * (long_megabytes - short_megabytes), (short, long)
    assert long["growth_mb"] < 0.15 * long_megabytes, long
    # ...and nothing accumulates while the epoch reads the whole file.
    assert long["epoch_growth_mb"] < 0.01 * long_megabytes, long
