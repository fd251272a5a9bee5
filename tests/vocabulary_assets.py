"""A tiny BERT whose vocabulary has [unused] slots, and domain text whose words it shreds: for the vocab tests.

The vocabulary is ``tiny_assets``'s with four ``[unusedX]`` slots after the special tokens (as in BERT's, where
they follow [PAD]); the corpus repeats a few long domain words that the tiny vocabulary splits letter by letter.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import tiny_assets

UNUSED = [f"[unused{i}]" for i in range(4)]
DOMAIN_WORDS = {"writeback": 30, "hypercholesterolemia": 12, "mutex": 20, "pthread": 8, "syscall": 6, "kthread": 2}


def vocabulary() -> list[str]:
    base = tiny_assets.vocabulary()
    return base[:1] + UNUSED + base[1:]  # [PAD], the slots, then [UNK] [CLS] ...


def write_model(directory: Path, with_heads: bool = True, tie: bool = True, seed: int = 0) -> Path:
    """A random 2-layer BERT (``BertForPreTraining`` or an encoder-only ``BertModel``) with the slotted vocabulary."""
    import torch
    from transformers import BertForPreTraining, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    tokens = vocabulary()
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    try:  # transformers 5 takes the vocabulary itself
        tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)}, do_lower_case=True)
    except TypeError:
        tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(str(directory))
    torch.manual_seed(seed)
    config = tiny_assets.tiny_bert_config(len(tokens))
    config.tie_word_embeddings = tie
    model = BertForPreTraining(config) if with_heads else BertModel(config)
    model.save_pretrained(str(directory), safe_serialization=True)
    return directory


def domain_sentence(rng: random.Random) -> str:
    words = tiny_assets.synthetic_sentence(rng).rstrip(".?!").split()
    words.insert(rng.randrange(len(words) + 1), rng.choices(list(DOMAIN_WORDS), weights=list(DOMAIN_WORDS.values()))[0])
    return " ".join(words) + "."


def write_domain_corpus(path: Path, num_documents: int = 40, seed: int = 0) -> Path:
    """A corpus-format file whose sentences each hold one domain word (more frequent ones more often)."""
    rng = random.Random(seed)
    documents = ["\n".join(domain_sentence(rng) for _ in range(rng.randint(2, 6))) for _ in range(num_documents)]
    path.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    return path


def write_extended(root: Path, with_heads: bool) -> tuple[Path, Path, list[int]]:
    """(extended model, its pregenerated data, the new rows): 6 words of the domain corpus, 4 into slots, 2 grown."""
    import json

    from training_helpers import make_pregenerated

    from bert_domain_ft.corpus.config import VocabExtendConfig
    from bert_domain_ft.corpus.vocabulary_extension import extend_vocabulary
    from bert_domain_ft.model.vocabulary import EXTENSION_RECORD

    corpus = write_domain_corpus(root / "corpus.txt")
    base = write_model(root / "base", with_heads=with_heads)
    model = root / "extended"
    extend_vocabulary(
        VocabExtendConfig(corpus=corpus, bert_model=str(base), add=6, min_count=1, output=model, show_progress=False)
    )
    data = make_pregenerated(corpus, model, root / "data", epochs=1, max_seq_len=32, objective="mlm")
    rows = [entry["id"] for entry in json.loads((model / EXTENSION_RECORD).read_text())["added"]]
    return model, data, rows


def capture_warmup(monkeypatch: Any) -> dict[str, Any]:
    """While ``monkeypatch`` lasts, finetune records the weights right before and right after the head warm-up
    (copied to the CPU) and its plan, in the returned dict ("before", "after", "plan")."""
    from bert_domain_ft.training import recipe

    captured: dict[str, Any] = {}
    original = recipe.TrainingLoop.warm_up_heads

    def wrapped(loop: Any, *arguments: Any) -> Any:
        captured["before"] = {k: v.detach().cpu().clone() for k, v in loop.setup.model.state_dict().items()}
        captured["plan"] = original(loop, *arguments)
        captured["after"] = {k: v.detach().cpu().clone() for k, v in loop.setup.model.state_dict().items()}
        return captured["plan"]

    monkeypatch.setattr(recipe.TrainingLoop, "warm_up_heads", wrapped)
    return captured
