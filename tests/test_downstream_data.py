"""Downstream data: every local layout, the GLUE TSV / SQuAD JSON readers, errors, low-data subsets, tokenization,
and the generated smoke data.

Each layout is built in a temporary directory from a few hand-written rows in the hub schema, so the tests check
that all sources give the same Features and values (what fine-tuning relies on) without any download.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import datasets
import pytest
from conftest import isolated_caches
import torch

from tamt_core.data import downstream as D
from tamt_core.data import smoke_tasks as S
from tamt_core.data.pretrain import DatasetUnavailableError
from tamt_core.tasks import TASKS, get_task


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downstream-data")


@pytest.fixture(scope="module", autouse=True)
def _caches(tmp: Path):
    with isolated_caches(tmp):
        yield


# --- hand-written rows in the hub schema ------------------------------------------------------------------------
RTE_ROWS = {
    "train": [{"sentence1": 'Mara said "yes" to Tom.', "sentence2": "Mara spoke.", "label": 0, "idx": 0},
              {"sentence1": "NA", "sentence2": "The sky is green.", "label": 1, "idx": 1}],
    "validation": [{"sentence1": "Ada owns a cat.", "sentence2": "Ada owns a dog.", "label": 1, "idx": 0}],
}
MNLI_ROWS = {
    "train": [{"premise": "A man sleeps.", "hypothesis": "A man rests.", "label": 0, "idx": 0},
              {"premise": "A man sleeps.", "hypothesis": "A man is tall.", "label": 1, "idx": 1},
              {"premise": "A man sleeps.", "hypothesis": "A man runs.", "label": 2, "idx": 2}],
    "validation_matched": [{"premise": "It rains.", "hypothesis": "It is dry.", "label": 2, "idx": 0}],
    "validation_mismatched": [{"premise": "Sales rose.", "hypothesis": "Sales fell.", "label": 2, "idx": 0},
                              {"premise": "Sales rose.", "hypothesis": "Sales grew.", "label": 0, "idx": 1}],
}
SQUAD_ROWS = {
    "train": [{"id": "q1", "title": "Ada", "context": " Ada lives in Olvent. She owns a cat.",
               "question": "Where does Ada live?", "answers": {"text": ["Olvent"], "answer_start": [14]}},
              {"id": "q2", "title": "Ada", "context": " Ada lives in Olvent. She owns a cat.",
               "question": "What does Ada own?", "answers": {"text": ["a cat"], "answer_start": [31]}}],
    "validation": [{"id": "d1", "title": "Tom", "context": "Tom is a baker.", "question": "What is Tom?",
                    "answers": {"text": ["a baker", "baker"], "answer_start": [7, 9]}}],
}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _write_per_task(root: Path, task: str, rows: dict[str, list[dict]]) -> Path:
    for split, split_rows in rows.items():
        _write_jsonl(root / task / f"{split}.jsonl", split_rows)
    return root


def _write_snapshot(root: Path, task: str, config: str, rows: dict[str, list[dict]]) -> Path:
    """What ``hf download <repo> --repo-type dataset --local-dir root`` leaves (parquet with the hub Features)."""
    features = D.hub_features(get_task(task))
    for split, split_rows in rows.items():
        (root / config).mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_list(split_rows, features=features).to_parquet(
            str(root / config / f"{split}-00000-of-00001.parquet"))
    (root / "README.md").write_text("---\nconfigs: []\n---\n")
    return root


def _as_lists(dd: datasets.DatasetDict) -> dict[str, list[dict]]:
    return {split: ds.to_list() for split, ds in dd.items()}


# --- layouts give identical schemas and values ------------------------------------------------------------------
def test_all_layouts_give_the_hub_schema_and_values(tmp: Path):
    task = get_task("rte")
    per_task = _write_per_task(tmp / "c2", "rte", RTE_ROWS)
    snapshot = _write_snapshot(tmp / "c1", "rte", "rte", RTE_ROWS)
    glue = tmp / "c3" / "RTE"
    glue.mkdir(parents=True)
    header = "index\tsentence1\tsentence2\tlabel\n"
    names = D.LABEL_NAMES["rte"]
    for split, fname in (("train", "train.tsv"), ("validation", "dev.tsv")):
        lines = [f"{r['idx']}\t{r['sentence1']}\t{r['sentence2']}\t{names[r['label']]}\n" for r in RTE_ROWS[split]]
        (glue / fname).write_text(header + "".join(lines), encoding="utf-8")

    sources = [per_task, per_task / "rte", snapshot, snapshot / "rte", tmp / "c3", glue]
    for source in sources:
        dd = D.load_task_dataset(task, str(source))
        assert list(dd) == ["train", "validation"], source
        for split in dd:
            assert dd[split].features == D.hub_features(task), source
            assert dd[split].features["label"].names == ["entailment", "not_entailment"]
        assert _as_lists(dd) == RTE_ROWS, source  # quotes and "NA" survive the TSV reader verbatim


def test_per_task_layout_accepts_parquet_and_csv_and_adds_idx(tmp: Path):
    task = get_task("sst2")
    root = tmp / "sst2-mixed" / "sst2"
    root.mkdir(parents=True)
    datasets.Dataset.from_list([{"sentence": "good fun .", "label": 1}, {"sentence": "dull .", "label": 0}]).to_parquet(
        str(root / "train.parquet"))
    (root / "validation.csv").write_text("sentence,label,idx\nquite nice .,1,0\n", encoding="utf-8")
    dd = D.load_task_dataset(task, str(root.parent))
    assert dd["train"].features == dd["validation"].features == D.hub_features(task)
    assert dd["train"].to_list() == [{"sentence": "good fun .", "label": 1, "idx": 0},
                                     {"sentence": "dull .", "label": 0, "idx": 1}]
    assert dd["validation"].to_list() == [{"sentence": "quite nice .", "label": 1, "idx": 0}]


def test_mnli_snapshot_and_per_task_have_both_dev_sets(tmp: Path):
    task = get_task("mnli")
    snap = D.load_task_dataset(task, str(_write_snapshot(tmp / "mnli-c1", "mnli", "mnli", MNLI_ROWS)))
    per_task = D.load_task_dataset(task, str(_write_per_task(tmp / "mnli-c2", "mnli", MNLI_ROWS)))
    assert list(snap) == list(per_task) == ["train", "validation_matched", "validation_mismatched"]
    assert _as_lists(snap) == _as_lists(per_task) == MNLI_ROWS
    assert snap["train"].features == per_task["train"].features == D.hub_features(task)


# --- original GLUE TSVs ------------------------------------------------------------------------------------------
def test_glue_tsv_mnli_gold_labels_by_position(tmp: Path):
    """MNLI's train.tsv has one annotator column, the dev files five: the label is always the last column."""
    d = tmp / "glue-mnli" / "MNLI"
    d.mkdir(parents=True)
    lead = "index\tpromptID\tpairID\tgenre\ts1_binary\ts2_binary\ts1_parse\ts2_parse\tsentence1\tsentence2"
    rows = [(r["premise"], r["hypothesis"], D.LABEL_NAMES["mnli"][r["label"]]) for r in MNLI_ROWS["train"]]
    (d / "train.tsv").write_text(f"{lead}\tlabel1\tgold_label\n" + "".join(
        f"{i}\t1\t2\tfiction\t(x)\t(y)\t(X)\t(Y)\t{p}\t{h}\tneutral\t{g}\n" for i, (p, h, g) in enumerate(rows)))
    for split, fname in (("validation_matched", "dev_matched.tsv"), ("validation_mismatched", "dev_mismatched.tsv")):
        (d / fname).write_text(f"{lead}\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n" + "".join(
            f"{i}\t1\t2\tslate\t(x)\t(y)\t(X)\t(Y)\t{r['premise']}\t{r['hypothesis']}\tneutral\tneutral\tneutral"
            f"\tneutral\tneutral\t{D.LABEL_NAMES['mnli'][r['label']]}\n" for i, r in enumerate(MNLI_ROWS[split])))
    dd = D.load_task_dataset(get_task("mnli"), str(d.parent))
    assert _as_lists(dd) == MNLI_ROWS
    assert [r["label"] for r in dd["train"]] == [0, 1, 2]  # entailment, neutral, contradiction


def test_glue_tsv_cola_headerless_mrpc_bom_stsb_float(tmp: Path):
    root = tmp / "glue-misc"
    (root / "CoLA").mkdir(parents=True)
    cola = 'gj04\t1\t\tThe cat "sat".\ngj04\t0\t*\tCat the sat.\n'
    (root / "CoLA" / "train.tsv").write_text(cola)
    (root / "CoLA" / "dev.tsv").write_text("cj99\t1\t\tNA\n")
    dd = D.load_task_dataset(get_task("cola"), str(root))
    assert dd["train"].to_list() == [{"sentence": 'The cat "sat".', "label": 1, "idx": 0},
                                     {"sentence": "Cat the sat.", "label": 0, "idx": 1}]
    assert dd["validation"].to_list() == [{"sentence": "NA", "label": 1, "idx": 0}]

    (root / "MRPC").mkdir()
    head = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    (root / "MRPC" / "train.tsv").write_text(head + "1\t11\t12\tHe left.\tHe went away.\n0\t13\t14\tA b.\tC d.\n",
                                             encoding="utf-8")
    (root / "MRPC" / "dev.tsv").write_text(head + "0\t15\t16\tX.\tY.\n", encoding="utf-8")
    dd = D.load_task_dataset(get_task("mrpc"), str(root))
    assert dd["train"].to_list() == [
        {"sentence1": "He left.", "sentence2": "He went away.", "label": 1, "idx": 0},
        {"sentence1": "A b.", "sentence2": "C d.", "label": 0, "idx": 1}]
    assert dd["train"].features["label"].names == ["not_equivalent", "equivalent"]

    (root / "STS-B").mkdir()
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    (root / "STS-B" / "train.tsv").write_text(head + "0\tnews\tf\t2012\t1\tnone\tnone\tA dog.\tA cat.\t1.250\n")
    (root / "STS-B" / "dev.tsv").write_text(head + "0\tnews\tf\t2012\t1\tnone\tnone\tHi.\tHello.\t4.8\n")
    dd = D.load_task_dataset(get_task("stsb"), str(root))
    assert dd["train"].features["label"] == datasets.Value("float32")
    assert dd["train"].to_list() == [{"sentence1": "A dog.", "sentence2": "A cat.", "label": 1.25, "idx": 0}]
    assert dd["validation"]["label"] == [pytest.approx(4.8)]


def test_glue_tsv_unknown_label_is_named(tmp: Path):
    d = tmp / "glue-bad" / "RTE"
    d.mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        (d / name).write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(ValueError, match="maybe"):
        D.load_task_dataset(get_task("rte"), str(d))


# --- SQuAD official JSON -----------------------------------------------------------------------------------------
def _official_squad(rows: list[dict]) -> dict:
    data: dict[str, dict[str, list]] = {}
    for r in rows:
        paragraphs = data.setdefault(r["title"], {})
        qas = paragraphs.setdefault(r["context"], [])
        qas.append({"id": r["id"], "question": r["question"],
                    "answers": [{"text": t, "answer_start": s}
                                for t, s in zip(r["answers"]["text"], r["answers"]["answer_start"])]})
    return {"version": "1.1", "data": [{"title": t, "paragraphs": [{"context": c, "qas": q} for c, q in ps.items()]}
                                       for t, ps in data.items()]}


def test_squad_official_json_is_flattened_like_the_hub(tmp: Path):
    task = get_task("squad")
    official = tmp / "squad-official"
    official.mkdir()
    for split, fname in D.SQUAD_JSON_FILES.items():
        (official / fname).write_text(json.dumps(_official_squad(SQUAD_ROWS[split])), encoding="utf-8")
    snapshot = _write_snapshot(tmp / "squad-c1", "squad", "plain_text", SQUAD_ROWS)
    per_task = _write_per_task(tmp / "squad-c2", "squad", SQUAD_ROWS)
    for source in (official, snapshot, per_task):
        dd = D.load_task_dataset(task, str(source))
        assert dd["train"].features == dd["validation"].features == D.hub_features(task), source
        assert _as_lists(dd) == SQUAD_ROWS, source  # leading space of the context kept, ids and answers exact
    row = dd["train"][1]
    start = row["answers"]["answer_start"][0]
    assert row["context"][start: start + len("a cat")] == "a cat"


# --- errors ------------------------------------------------------------------------------------------------------
def test_missing_directory_names_every_layout_and_file(tmp: Path):
    with pytest.raises(DatasetUnavailableError) as err:
        D.load_task_dataset(get_task("mnli"), str(tmp / "nowhere"))
    msg = str(err.value)
    for expected in ("GLUE MNLI", "does not exist", "'nyu-mll/glue'", "config 'mnli'", "DIR/mnli/train.jsonl",
                     "DIR/mnli/validation_matched.jsonl", "DIR/mnli/validation_mismatched.jsonl",
                     "DIR/mnli/validation_mismatched-00000-of-00001.parquet",
                     "hf download nyu-mll/glue --repo-type dataset --local-dir DIR", "DIR/MNLI/train.tsv",
                     "DIR/MNLI/dev_matched.tsv", "DIR/MNLI/dev_mismatched.tsv", "not a benchmark"):
        assert expected in msg, expected
    with pytest.raises(DatasetUnavailableError) as err:
        D.load_task_dataset(get_task("squad"), str(tmp / "nowhere"))
    msg = str(err.value)
    for expected in ("SQuAD v1.1", "'rajpurkar/squad'", "DIR/train-v1.1.json", "DIR/dev-v1.1.json",
                     "DIR/squad/validation.jsonl", "DIR/plain_text/train-00000-of-00001.parquet"):
        assert expected in msg, expected


def test_partial_layout_names_the_missing_split(tmp: Path):
    d = tmp / "partial" / "MNLI"
    d.mkdir(parents=True)
    (d / "train.tsv").write_text("x\n")
    with pytest.raises(DatasetUnavailableError, match=r"original layout .* lacks the split\(s\) "
                                                      r"validation_matched, validation_mismatched"):
        D.load_task_dataset(get_task("mnli"), str(d.parent))


def test_unknown_layout(tmp: Path):
    d = tmp / "junk"
    (d / "cola").mkdir(parents=True)
    (d / "cola" / "notes.txt").write_text("hello")
    (d / "cola" / "train.xlsx").write_text("hello")
    with pytest.raises(DatasetUnavailableError, match="no known layout found") as err:
        D.load_task_dataset(get_task("cola"), str(d))
    assert "DIR/CoLA/dev.tsv" in str(err.value) and "DIR/cola/validation.jsonl" in str(err.value)


def test_hub_source_offline_gives_our_error():
    with pytest.raises(DatasetUnavailableError, match="loading the hub id 'nyu-mll/glue' \\(config 'rte'\\) failed"):
        D.load_task_dataset(get_task("rte"), "hub")
    with pytest.raises(DatasetUnavailableError, match="'rajpurkar/squad' failed"):
        D.load_task_dataset(get_task("squad"), "rajpurkar/squad")


# --- low-data subsets --------------------------------------------------------------------------------------------
def test_subset_indices_is_the_reference_random_split():
    for n, size, seed in ((100, 10, 1), (8551, 1000, 3), (5, 5, 2)):
        expected = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].tolist()
        assert D.subset_indices(n, size, seed) == expected
        # the reference: random_split(train, [N, rest], generator=manual_seed(seed))[0].indices
        split = torch.utils.data.random_split(range(n), [size, n - size], generator=torch.Generator().manual_seed(seed))
        assert D.subset_indices(n, size, seed) == list(split[0].indices)
    assert D.subset_indices(100, 10, 1) != D.subset_indices(100, 10, 2)
    assert len(set(D.subset_indices(100, 50, 4))) == 50


@pytest.mark.parametrize("size", [0, -3, 101])
def test_subset_indices_rejects_bad_sizes(size: int):
    with pytest.raises(ValueError, match=rf"train_size {size} must be between 1 and 100 \(the size of sst2's"):
        D.subset_indices(100, size, 1, task_name="sst2")


# --- tokenization ------------------------------------------------------------------------------------------------
def test_tokenize_glue_pair_longest_first(minilm_tokenizer, tmp: Path):
    tok = minilm_tokenizer
    long_a = "one two three four five six seven eight nine ten"
    short_b = "red green blue"
    raw = datasets.Dataset.from_list([{"sentence1": long_a, "sentence2": short_b, "label": 3.5, "idx": 0}],
                                     features=D.hub_features(get_task("stsb")))
    out = D.tokenize_glue(raw, get_task("stsb"), tok, max_length=10, cache_dir=tmp / "tok-cache")
    a_ids = tok(long_a, add_special_tokens=False)["input_ids"]
    b_ids = tok(short_b, add_special_tokens=False)["input_ids"]
    assert len(a_ids) == 10 and len(b_ids) == 3
    # 10 − 3 specials = 7 text tokens; longest_first trims the longer side (A) down to 4, B stays whole
    row = out[0]
    assert row["input_ids"] == [tok.cls_token_id, *a_ids[:4], tok.sep_token_id, *b_ids, tok.sep_token_id]
    assert row["token_type_ids"] == [0] * 6 + [1] * 4
    assert row["attention_mask"] == [1] * 10
    assert row["labels"] == 3.5 and out.features["labels"] == datasets.Value("float32")
    assert set(out.column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert list((tmp / "tok-cache").glob("glue-stsb-*.arrow"))
    again = D.tokenize_glue(raw, get_task("stsb"), tok, max_length=10, cache_dir=tmp / "tok-cache")
    assert again.cache_files == out.cache_files  # the Arrow cache is reused

    single = datasets.Dataset.from_list([{"sentence": long_a, "label": 1, "idx": 0}],
                                        features=D.hub_features(get_task("sst2")))
    row = D.tokenize_glue(single, get_task("sst2"), tok, max_length=128)[0]
    assert row["input_ids"] == [tok.cls_token_id, *a_ids, tok.sep_token_id] and row["labels"] == 1
    with pytest.raises(ValueError, match="span task"):
        D.tokenize_glue(single, get_task("squad"), tok)


# --- smoke data --------------------------------------------------------------------------------------------------
def test_smoke_tasks_are_deterministic(tmp: Path):
    a, b = S.write_smoke_tasks(tmp / "smoke-a"), S.write_smoke_tasks(tmp / "smoke-b")
    files = sorted(p.relative_to(a) for p in a.rglob("*.jsonl"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.jsonl"))
    assert len(files) == sum(len(s) for s in S.SPLIT_SIZES.values())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    c = S.write_smoke_tasks(tmp / "smoke-c", seed=1)
    assert (c / "rte" / "train.jsonl").read_bytes() != (a / "rte" / "train.jsonl").read_bytes()


def test_smoke_dir_is_cached_under_tamt_cache(tmp: Path):
    first = S.smoke_tasks_dir()
    assert first == tmp / "tamt" / f"smoke-tasks-{S.GENERATOR_VERSION}"
    mtime = (first / "mnli" / "train.jsonl").stat().st_mtime_ns
    assert S.smoke_tasks_dir() == first and (first / "mnli" / "train.jsonl").stat().st_mtime_ns == mtime
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


@pytest.mark.parametrize("name", list(TASKS))
def test_smoke_data_has_the_hub_schema_and_balanced_labels(name: str):
    task = get_task(name)
    dd = D.load_task_dataset(task)  # source None: the smoke data
    assert list(dd) == [task.train_split, *(s for _, s in task.dev_splits)]
    for split, ds in dd.items():
        assert ds.features == D.hub_features(task)
        assert len(ds) == S.SPLIT_SIZES[name][split]
        if task.kind == "classification":
            counts = Counter(ds["label"])
            assert sorted(counts) == list(range(task.num_labels))
            assert max(counts.values()) - min(counts.values()) <= 1, (split, counts)
        elif task.kind == "regression":
            labels = torch.tensor(ds["label"])
            assert 0.0 <= labels.min() < 0.5 and 4.5 < labels.max() <= 5.0
            levels = Counter(min(S._STS_LEVELS, key=lambda lv: abs(lv[0] - x))[0] for x in ds["label"])
            assert len(levels) == 5 and max(levels.values()) - min(levels.values()) <= 1  # five levels, balanced
        else:
            rows = ds.to_list()
            assert len({r["id"] for r in rows}) == len(rows)
            for r in rows:
                for text, start in zip(r["answers"]["text"], r["answers"]["answer_start"]):
                    assert r["context"][start: start + len(text)] == text
        if task.kind != "span":
            assert ds["idx"] == list(range(len(ds)))


def test_smoke_mnli_mismatched_is_another_genre():
    dd = D.load_task_dataset(get_task("mnli"))
    train_text = " ".join(dd["train"]["premise"])
    mismatched = " ".join(dd["validation_mismatched"]["premise"])
    assert any(head in mismatched for head in S._COMPANY_HEADS)
    assert not any(f"{head} {tail}" in train_text for head in S._COMPANY_HEADS for tail in S._COMPANY_TAILS)


def test_smoke_squad_has_contexts_longer_than_one_window(minilm_tokenizer):
    contexts = set(D.load_task_dataset(get_task("squad"))["validation"]["context"])
    lengths = [len(minilm_tokenizer(c, add_special_tokens=False)["input_ids"]) for c in contexts]
    assert max(lengths) > 384 and sorted(lengths)[len(lengths) // 2] < 200
