"""The evaluation stage: how good is an adapted model, on held-out text and on a real task.

config        the settings of evaluate, probe, plot and fill-mask
heldout       masked-LM (and NSP) loss, perplexity and accuracy on a held-out epoch, per corpus
evaluate      ``evaluate``: a model against pregenerated held-out data or a corpus; the general held-out set
plots         a run's training curves as one PNG, and the charts' shared matplotlib plumbing
probe_report  probe results: paired t intervals, tables, JSON and a bar chart
probe         ``probe``: a classifier fine-tuned from each model, per seed, scored on the test sentences
provenance    the commands that made a model (prepare, select, pregenerate, finetune), from their records
model_card    the ``README.md`` of a final model: Hub metadata and the run's facts, from its output directory
fill_mask     ``fill-mask``: each model's top predictions for masked words, side by side
"""
