"""Pregeneration against the fast tokenizer alone, in one run.

    python benchmarks/pregenerate.py CORPUS [--bert_model DIR]

Prints: time to tokenize the corpus once with the fast (Rust) tokenizer alone; a full pregenerate of 1 and 3
epochs at max_seq_len 128 and their ratios to the tokenizer-only time; packing fill; peak RSS of 3 epochs with
and without --reduce_memory, and with --reduce_memory on the corpus repeated 4× (flat RSS = bounded memory).
Each job runs in a fresh process (imports included in every time), so the ratios compare like with like.
Targets: 3 epochs ≤ 1.5× tokenizer-only; --reduce_memory peak ≤ 200 MB and flat at 4×; packing fill ≥ 88%.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _measure import default_model, run_measured

TOKENIZE_ONLY = """
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained({model!r})
backend = tokenizer.backend_tokenizer
backend.no_padding(); backend.no_truncation()
tokens = 0
with open({corpus!r}, encoding="utf-8") as handle:
    batch = []
    for line in handle:
        if line.strip():
            batch.append(line.strip())
        if len(batch) == 4096:
            tokens += sum(len(e.ids) for e in backend.encode_batch_fast(batch, add_special_tokens=False)); batch = []
    tokens += sum(len(e.ids) for e in backend.encode_batch_fast(batch, add_special_tokens=False))
REPORT = {{"tokens": tokens}}
"""

PREGENERATE = """
from pathlib import Path
from bert_domain_ft.data.config import PregenerateConfig
from bert_domain_ft.data.pregenerate import pregenerate
manifest = pregenerate(PregenerateConfig(holdout_fraction=0.0, train_corpus=Path({corpus!r}), output_dir=Path({output!r}), bert_model={model!r},
    epochs_to_generate={epochs}, max_seq_len=128, reduce_memory={reduce}, num_workers={workers}, overwrite=True,
    show_progress=False))
fills = [e["statistics"]["packing_fill"] for e in manifest["epochs"]]
REPORT = {{"packing_fill": sum(fills) / len(fills), "instances": sum(e["num_instances"] for e in manifest["epochs"])}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--bert_model", default=None, help="tokenizer source (default: the MiniLM of the demo)")
    parser.add_argument("--num_workers", type=int, default=2)
    arguments = parser.parse_args()
    model = arguments.bert_model or default_model()
    corpus = str(arguments.corpus.resolve())
    with tempfile.TemporaryDirectory() as scratch:
        output = str(Path(scratch) / "out")

        def pregen(epochs: int, reduce: bool, source: str = corpus) -> dict[str, float]:
            code = PREGENERATE.format(
                corpus=source, output=output, model=model, epochs=epochs, reduce=reduce, workers=arguments.num_workers
            )
            return run_measured(code)

        tokenizer_only = run_measured(TOKENIZE_ONLY.format(model=model, corpus=corpus))
        one_epoch = pregen(1, False)
        three_epochs = pregen(3, False)
        three_reduced = pregen(3, True)
        larger = Path(scratch) / "corpus_x4.txt"
        text = arguments.corpus.read_bytes()
        larger.write_bytes(b"\n\n".join([text] * 4))
        three_reduced_x4 = pregen(3, True, str(larger))

    size_mb = arguments.corpus.stat().st_size / 1e6
    base = tokenizer_only["seconds"]
    print(f"corpus: {arguments.corpus} ({size_mb:.1f} MB, {tokenizer_only['tokens'] / 1e6:.2f} M tokens)")
    print(f"tokenizer alone:                 {base:6.2f} s   1.00x   peak {tokenizer_only['peak_rss_mb']:.0f} MB")
    for label, result in (("pregenerate 1 epoch", one_epoch), ("pregenerate 3 epochs", three_epochs)):
        print(
            f"{label:<32} {result['seconds']:6.2f} s   {result['seconds'] / base:.2f}x   "
            f"peak {result['peak_rss_mb']:.0f} MB"
        )
    print(
        f"3 epochs, --reduce_memory:       {three_reduced['seconds']:6.2f} s   "
        f"{three_reduced['seconds'] / base:.2f}x   peak {three_reduced['peak_rss_mb']:.0f} MB"
    )
    print(
        f"3 epochs, --reduce_memory, 4x corpus: peak {three_reduced_x4['peak_rss_mb']:.0f} MB "
        f"({three_reduced_x4['peak_rss_mb'] / three_reduced['peak_rss_mb']:.2f}x the 1x peak)"
    )
    print(
        f"packing fill (3 epochs):         {100 * three_epochs['packing_fill']:.1f}%  "
        f"({three_epochs['instances']:.0f} instances)"
    )


if __name__ == "__main__":
    main()
