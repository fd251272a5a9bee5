"""bert_domain_ft: adapt a pretrained BERT to your domain by continuing its pretraining (masked LM + NSP).

Stages, each an importable function with a typed config and a sub-command of ``bert-domain-ft``:
prepare (raw text → corpus format), pregenerate (corpus → epochs of masked NSP pairs as memmaps),
finetune (epochs → adapted model), simple (one command, pairs made on the fly), evaluate.
"""

__version__ = "0.1.0"
