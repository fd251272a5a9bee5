"""The corpus stage: text in, in the corpus format (a sentence a line, blank lines between documents). No torch
(but ``vocab extend``, which rewrites the model's rows through ``model.vocabulary``).

config              the settings of prepare, check, select and tokenizer (one dataclass each)
records             parquet files and ``datasets`` save_to_disk directories, streamed a batch of rows at a time
reading             streaming the corpus format, and finding and reading ``prepare``'s raw inputs
sentences           Punkt sentence splitting trained on the user's text, its parameters kept as JSON
prepare             ``prepare``: raw text → the corpus format, normalised, split, duplicates removed
check               ``check``: is a corpus file usable, and what does it hold
task_files          the task's own files: labelled sentences for the probe, texts for TAPT and selection
selection           ``select``: the corpus documents nearest to a task's texts (kNN-TAPT; BM25 or embeddings)
tokenizer_training  ``tokenizer``: a WordPiece, byte-level BPE or Unigram tokenizer trained on the corpus
vocabulary          ``vocab analyse``: how the tokenizer splits the domain's words, the costliest first
vocabulary_extension ``vocab extend``: the costliest words as whole-word entries ([unused] slots first), model too
"""
