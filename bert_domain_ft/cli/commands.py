"""What each command does with its parsed flags: build its config, call one library function, print the result.

The library is imported inside the functions, so ``--help`` and the data stages start without importing torch.

    status = run_command(arguments, run_pregenerate)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bert_domain_ft.cli.flags import (
    EFFECTIVE_CONFIG_NAME,
    EXIT_USER_ERROR,
    build_config,
    effective_config,
    save_effective_config,
)
from bert_domain_ft.corpus.config import (
    CheckConfig,
    PrepareConfig,
    SelectConfig,
    TokenizerTrainingConfig,
    VocabAnalyseConfig,
    VocabExtendConfig,
)
from bert_domain_ft.data.config import PregenerateConfig, corpora_from_text
from bert_domain_ft.errors import UserError, redact_secrets
from bert_domain_ft.evaluation.config import EvaluateConfig, FillMaskConfig, PlotConfig, ProbeConfig
from bert_domain_ft.training.config import FinetuneConfig, OriginalSimpleFlags, OriginalTrainingFlags, SimpleConfig

EXIT_REJECTED = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what `seq 1000000 | head -1` gives seq


def run_guarded(action: Callable[[], Any]) -> int:
    """Run ``action``; a ``UserError`` becomes ``error: <message>`` on stderr and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        result = action()
    except UserError as error:  # the user's own strings too (--bert_model https://user:token@host/…): redacted
        print(f"error: {redact_secrets(str(error))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `bert-domain-ft … | head`: the reader has all it wanted; no traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush of stdout must not fail again
        return EXIT_BROKEN_PIPE
    return result if isinstance(result, int) else 0


def run_command(arguments: argparse.Namespace, run: Callable[[argparse.Namespace], Any]) -> int:
    """``run(arguments)`` under ``run_guarded``; after a successful run, a command with an ``output_dir`` gets its
    effective configuration saved there as ``effective_config.yaml`` (reusable with ``--config``)."""

    def action() -> int:
        status = run(arguments)
        output_dir = getattr(arguments, "output_dir", None)
        is_main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 writes, as during the run
        if status == 0 and is_main and output_dir is not None and Path(output_dir).is_dir():
            try:  # the run's own output is complete: a refusal is said, the run does not fail
                _save_effective_config(Path(output_dir), arguments)
            except UserError as error:
                logging.getLogger(__name__).warning("effective configuration not saved: %s", error)
        return status

    return run_guarded(action)


def _save_effective_config(output_dir: Path, arguments: argparse.Namespace) -> None:
    """``effective_config.yaml`` into the run's ``output_dir``, under its lock (a run started there meanwhile keeps
    it to itself), never over a file of that name this tool did not write (the directory's ledger)."""
    from bert_domain_ft.files import hold_output_lock, owns_directory, unclaimed_entries

    with hold_output_lock(output_dir, "save effective_config.yaml"):
        if not owns_directory(output_dir) or EFFECTIVE_CONFIG_NAME in unclaimed_entries(output_dir):
            raise UserError(f"{output_dir / EFFECTIVE_CONFIG_NAME}: not written by bert_domain_ft; left as it is")
        save_effective_config(output_dir, effective_config(arguments))


def _show(report: Any, as_json: bool, leave_out: str = "") -> int:
    """Print ``report`` as a table, or as JSON (without its ``leave_out`` entry); 0."""
    values = {key: value for key, value in report.to_json().items() if key != leave_out} if as_json else {}
    print(json.dumps(values, indent=2) if as_json else report.format())
    return 0


def run_prepare(arguments: argparse.Namespace) -> int:
    """Turn raw text into the corpus format: one sentence per line (Punkt), a blank line between documents."""
    from bert_domain_ft.corpus.prepare import prepare_corpus

    config = build_config(PrepareConfig, arguments)
    return _show(prepare_corpus(config), config.print_json)


def run_check(arguments: argparse.Namespace) -> int:
    """Validate a corpus file and describe it; exit status 0 only if pregeneration will accept it."""
    from bert_domain_ft.corpus.check import check_corpus

    config = build_config(CheckConfig, arguments)
    report = check_corpus(config.corpus, config.bert_model, config.max_seq_len, show_progress=config.show_progress)
    return _show(report, config.print_json) or (0 if report.accepted else EXIT_REJECTED)


def run_pregenerate(arguments: argparse.Namespace) -> int:
    """Turn a corpus (one sentence per line, blank line between documents) into epochs of masked NSP instances."""
    from bert_domain_ft.data.pregenerate import pregenerate

    config = build_config(PregenerateConfig, arguments, train_corpus=corpora_from_text(arguments.train_corpus))
    manifest = pregenerate(config)
    epochs, holdout = manifest["epochs"], manifest["holdout"]
    print(
        f"wrote {len(epochs)} epochs ({sum(e['num_instances'] for e in epochs)} instances) to {config.output_dir}"
        + (f", held-out set of {holdout['num_instances']} instances" if holdout else "")
    )
    return 0


def finetune_config(arguments: argparse.Namespace) -> FinetuneConfig:
    """The flags → a ``FinetuneConfig``; an original script's flag that sets nothing here is said in one line."""
    _note_ignored_flags(arguments)
    return build_config(FinetuneConfig, arguments)


def _note_ignored_flags(arguments: argparse.Namespace) -> None:
    level = build_config(OriginalTrainingFlags, arguments).fp16_opt_level
    if level is not None:
        logging.getLogger(__name__).info(
            "--fp16_opt_level %s is apex's and changes nothing here: --fp16 uses torch.amp (float16 autocast with a "
            "gradient scaler), which has no levels", level
        )  # fmt: skip


def run_finetune(arguments: argparse.Namespace) -> int:
    """continue pretraining a model on pregenerated epochs (masked LM, + NSP for BERT), or pretrain one from scratch"""
    config = finetune_config(arguments)
    from bert_domain_ft.training.recipe import finetune  # imports torch: only once the flags are known to be fine

    finetune(config)
    return 0


def simple_config(arguments: argparse.Namespace) -> SimpleConfig:
    if arguments.save_best and arguments.probe_train is None:
        # finetune's other yardstick, the held-out MLM loss, needs pregenerated data with --holdout_fraction.
        raise UserError("--save_best: simple has no held-out set, so the best model is the best by a probe; "
                        "give --probe_train and --probe_test (labelled sentences, see `bert-domain-ft probe`)")  # fmt: skip
    _note_ignored_flags(arguments)
    epochs = build_config(OriginalSimpleFlags, arguments).epochs(arguments.epochs)
    overrides = {"pregenerated_data": arguments.train_corpus, "epochs": epochs, "do_eval": False}
    return build_config(SimpleConfig, arguments, training=build_config(FinetuneConfig, arguments, **overrides))


def run_simple(arguments: argparse.Namespace) -> int:
    """continue pretraining a BERT on a corpus in one command: sentence pairs and masks made on the fly"""
    config = simple_config(arguments)
    from bert_domain_ft.training.simple import simple_finetune  # imports torch: only once the flags are fine

    simple_finetune(config)
    return 0


def run_evaluate(arguments: argparse.Namespace) -> int:
    """Evaluate a model on held-out data: masked-LM loss, perplexity, MLM accuracy, NSP accuracy."""
    from bert_domain_ft.evaluation.evaluate import evaluate_model
    from bert_domain_ft.evaluation.heldout import format_result_table

    to_stdout = arguments.json is not None and str(arguments.json) == "-"  # print the JSON
    config = build_config(EvaluateConfig, arguments, json_output=None if to_stdout else arguments.json)
    result = evaluate_model(config)
    title = "held-out set" if config.epoch is None and config.data is not None else "evaluation set"
    print(json.dumps(result.to_json(), indent=2) if to_stdout else format_result_table(result, title=title))
    if config.json_output is not None:
        print(f"wrote {config.json_output}")
    return 0


def run_plot(arguments: argparse.Namespace) -> int:
    """Plot a finetune run's metrics.jsonl (losses, held-out metrics, learning rate) into a PNG."""
    from bert_domain_ft.evaluation.plots import plot_run

    config = build_config(PlotConfig, arguments)
    print(f"wrote {plot_run(config.run_dir, config.output)}")
    return 0


def run_probe(arguments: argparse.Namespace) -> int:
    """Compare models on a downstream task: fine-tune a classifier from each (several seeds), print accuracy/F1."""
    from bert_domain_ft.evaluation import probe, probe_report

    config = build_config(ProbeConfig, arguments)
    print(probe_report.format_probe_table(probe.run_probe(config)))
    for path in (config.json_output, config.plot_output):
        if path is not None:
            print(f"wrote {path}")
    return 0


def run_fill_mask(arguments: argparse.Namespace) -> int:
    """Show each model's top predictions for masked words side by side (your texts, or held-out sentences)."""
    from bert_domain_ft.evaluation.fill_mask import fill_masks, format_fill_mask

    print(format_fill_mask(*fill_masks(build_config(FillMaskConfig, arguments))))
    return 0


def run_tokenizer(arguments: argparse.Namespace) -> int:
    """Train a new tokenizer (WordPiece, byte-level BPE or Unigram) on a corpus; AutoTokenizer loads the result."""
    from bert_domain_ft.corpus.tokenizer_training import train_tokenizer

    config = build_config(TokenizerTrainingConfig, arguments)
    directory = train_tokenizer(config)
    print(f"wrote a {config.kind} tokenizer to {directory}; use it with --tokenizer {directory}")
    return 0


def run_select(arguments: argparse.Namespace) -> int:
    """Keep the corpus documents nearest to your task's texts (each task text gets neighbours), up to a budget."""
    from bert_domain_ft.corpus.selection import select_documents

    config = build_config(SelectConfig, arguments)
    return _show(select_documents(config), config.print_json, leave_out="kept_document_indices")


def run_vocab_analyse(arguments: argparse.Namespace) -> int:
    """How the tokenizer splits a domain's words: pieces per word, the most fragmented frequent words, sequences/MB."""
    from bert_domain_ft.corpus.vocabulary import analyse_vocabulary

    config = build_config(VocabAnalyseConfig, arguments)
    return _show(analyse_vocabulary(config), config.print_json)


def run_vocab_extend(arguments: argparse.Namespace) -> int:
    """Give the domain's costliest words tokens of their own ([unused] slots first), new rows = their pieces' mean."""
    from bert_domain_ft.corpus.vocabulary_extension import extend_vocabulary

    config = build_config(VocabExtendConfig, arguments)
    return _show(extend_vocabulary(config), config.print_json)
