"""The data stage: a corpus becomes epochs of masked instances, and epochs become batches. No torch but ``loader``.

config          the pregeneration settings
document_store  the tokenized corpus: one token array plus sentence and document offsets
instances       NSP pairs and packed MLM rows, computed on offsets (``InstanceRecipe``, ``RowLayout``)
masking         masked-LM masking of rows (pregenerated or per batch) and the batch layout the model takes
mixing          several corpora and the task's text: sampling probabilities and mixed epoch orders
epoch_format    the pregenerated-data format: manifest, epoch arrays, opening and checking them
epoch_writer    one epoch made in shards by worker processes, then assembled with checksums
pregenerate     ``pregenerate``: corpus → N epochs and a held-out set, resumable, byte-identical
legacy_format   converting the original script's JSON epochs into the memmap format
simple_pairs    the ``simple`` stage's two-sentence pairs drawn per epoch and masked per batch
loader          what the training loop reads: epoch sources, batch collation, plans, prefetching
"""
