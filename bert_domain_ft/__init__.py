"""bert_domain_ft: adapt a pretrained BERT (or RoBERTa, XLM-R) to a domain by continuing its pretraining.

The stages, each an importable function taking a typed config and a sub-command of ``bert-domain-ft``:
prepare (raw text → the corpus format), check (is a corpus usable), select (the corpus documents nearest to a
task), tokenizer (a new vocabulary), pregenerate (corpus → epochs of masked instances as memmaps), finetune
(epochs → adapted model), simple (one command, pairs made on the fly), evaluate (held-out masked-LM loss),
probe (a classifier fine-tuned from each model) and plot (training curves).

The packages, lowest layer first; a package imports only its own modules and lower layers:
    errors, files   user errors; atomic writes, locks, streamed .npy files
    model           model and tokenizer files, loading, the pretraining heads and losses, the optimizer
    kernels         fused attention and feed-forward kernels
    corpus          text in: preparing, checking, selecting, reading task files, training tokenizers
    data            the document store, instances, masking, pregenerated epochs and the loader
    evaluation      held-out evaluation, the downstream probe, reports and plots
    training        the finetune and simple stages: recipe, loop, checkpoints, distribution
    cli             the ``bert-domain-ft`` command and its flags

    from bert_domain_ft.data.pregenerate import pregenerate
"""

__version__ = "0.1.0"
