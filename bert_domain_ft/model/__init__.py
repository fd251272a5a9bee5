"""The model layer: what the stages need to know about a model and its tokenizer, and how it is loaded and trained.

files         a model directory's small JSON files, read without torch (family, positions, NSP head)
tokenizer     loading the tokenizer, and the facts about it that pregenerated data records
pretraining   the pretraining objective: a BERT with its heads, and the masked-LM (+ NSP) losses of any model
loading       loading a model to train or evaluate (or building one from scratch), its files checked first
saving        writing a trained model: an MLM-only BERT without its NSP head, the base's sentence-transformers files
optimization  AdamW with BERT's weight-decay exemptions, the warm-up/decay schedule, the L2-SP anchor
vocabulary    new vocabulary rows: the mean of their pieces, their record, training only them (warm-up)
"""
