"""Raw downstream data (six GLUE tasks and SQuAD v1.1, paper §4.1.1, App. B) and its GLUE tokenization.

Every source gives the same thing: a :class:`datasets.DatasetDict` in the schema of the task's hub dataset
(``nyu-mll/glue`` configs, ``rajpurkar/squad``), cast to the hub's :class:`datasets.Features`, with the task's
training split and each of its dev splits (test splits are never needed: the paper reports dev numbers, App. C).
Fine-tuning code therefore never knows where the data came from. Sources, in :func:`load_task_dataset`:

* ``None``: the generated smoke data (:mod:`tamt_core.data.smoke_tasks`) — a smoke default, not a benchmark;
* ``"hub"`` or a hub id: ``datasets.load_dataset`` (the real path; needs hub access or a warm HF cache);
* a local directory, in one of three layouts — a hub snapshot (``hf download … --local-dir``), per-task files in
  the hub schema, or the original distribution the reference code reads (GLUE TSVs, SQuAD's official JSON).

Everything goes through ``datasets`` loaders, so it is cached as Arrow and keyed by datasets' fingerprints.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from tamt_core.data.caching import arrow_cache_file
from tamt_core.data.pretrain import DatasetUnavailableError
from tamt_core.data.sources import is_local
from tamt_core.hparams import SettingError
from tamt_core.tasks import Task

log = logging.getLogger(__name__)

_CACHE_VERSION = "glue-tokens-v1"  # part of every cache key: bump when tokenisation changes

__all__ = ["DatasetUnavailableError", "hub_features", "load_task_dataset", "tokenize_glue", "subset_indices",
           "LOCAL_EXTENSIONS", "GLUE_TSV_FILES", "SQUAD_JSON_FILES"]

HUB_SOURCE = "hub"
"""``source`` value meaning "the task's own hub dataset" (``task.hub_path`` / ``task.hub_config``)."""

LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "cola": ("unacceptable", "acceptable"),
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "rte": ("entailment", "not_entailment"),
    "mnli": ("entailment", "neutral", "contradiction"),
}
"""ClassLabel names of each classification task, in the hub's order (the integer label is the index)."""

LOCAL_EXTENSIONS: tuple[str, ...] = ("jsonl", "json", "parquet", "csv")
"""Per-task layout (``DIR/<task>/<split>.<ext>``): accepted file types, in order of preference."""

_LOADER = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv"}

SQUAD_HUB_CONFIG = "plain_text"
"""The folder of ``rajpurkar/squad``'s parquet files in a hub snapshot (its only config)."""

GLUE_TSV_DIRS: dict[str, str] = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "mnli": "MNLI",
                                 "rte": "RTE"}
"""Folder of each task in the original GLUE distribution (``download_glue_data.py``)."""

GLUE_TSV_FILES: dict[str, dict[str, str]] = {
    name: ({"train": "train.tsv", "validation_matched": "dev_matched.tsv",
            "validation_mismatched": "dev_mismatched.tsv"} if name == "mnli"
           else {"train": "train.tsv", "validation": "dev.tsv"})
    for name in GLUE_TSV_DIRS
}
"""Hub split -> TSV file name in the original GLUE distribution."""

SQUAD_JSON_FILES: dict[str, str] = {"train": "train-v1.1.json", "validation": "dev-v1.1.json"}
"""Hub split -> official SQuAD v1.1 file (the reference's ``--train_file`` / ``--predict_file``)."""


@dataclass(frozen=True)
class _TsvFormat:
    """How the reference's GLUE processors read a task's TSV: header or not, and the columns by position.

    Positions, not header names, as the processors index ``line[i]`` (``hg_transformers/data/processors/glue.py``,
    reference-impl §7.1); ``-1`` is the last column (MNLI's ``gold_label``, whose position differs between
    ``train.tsv`` and the dev files; STS-B's ``score``; RTE's ``label``).
    """

    header: bool
    text_columns: tuple[int, ...]
    label_column: int


_TSV_FORMATS: dict[str, _TsvFormat] = {
    "cola": _TsvFormat(header=False, text_columns=(3,), label_column=1),  # source, label, orig. label, sentence
    "sst2": _TsvFormat(header=True, text_columns=(0,), label_column=1),  # sentence, label
    "mrpc": _TsvFormat(header=True, text_columns=(3, 4), label_column=0),  # Quality, #1 ID, #2 ID, #1/#2 String
    "stsb": _TsvFormat(header=True, text_columns=(7, 8), label_column=-1),  # ..., sentence1, sentence2, score
    "mnli": _TsvFormat(header=True, text_columns=(8, 9), label_column=-1),  # ..., sentence1, sentence2, gold_label
    "rte": _TsvFormat(header=True, text_columns=(1, 2), label_column=-1),  # index, sentence1, sentence2, label
}

_GLUE_TOKEN_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")


# --- schema ------------------------------------------------------------------------------------------------------
def hub_features(task: Task) -> datasets.Features:
    """The hub's :class:`datasets.Features` of ``task``'s dataset, in the hub's column order.

    GLUE: the task's text columns, ``label`` (ClassLabel with the hub's names; float32 for STS-B), ``idx`` int32.
    SQuAD: ``id``, ``title``, ``context``, ``question``, ``answers`` = ``{text: [str], answer_start: [int32]}``.
    Every source is cast to these, so all of them give identical schemas.
    """
    if task.kind == "span":
        return datasets.Features({
            "id": datasets.Value("string"), "title": datasets.Value("string"),
            "context": datasets.Value("string"), "question": datasets.Value("string"),
            "answers": {"text": datasets.List(datasets.Value("string")),
                        "answer_start": datasets.List(datasets.Value("int32"))},
        })
    label = (datasets.Value("float32") if task.kind == "regression"
             else datasets.ClassLabel(names=list(LABEL_NAMES[task.name])))
    return datasets.Features({**{f: datasets.Value("string") for f in task.text_fields}, "label": label,
                              "idx": datasets.Value("int32")})


def _splits(task: Task) -> list[str]:
    """Hub splits a task needs: the training split, then every dev split (MNLI: matched, mismatched)."""
    return [task.train_split, *(split for _, split in task.dev_splits)]


def _display_name(task: Task) -> str:
    return "SQuAD v1.1" if task.kind == "span" else f"GLUE {task.name.upper()}"


def _hub_label(task: Task) -> str:
    return f"{task.hub_path!r}" + (f" (config {task.hub_config!r})" if task.hub_config else "")


# --- local layouts -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Layout:
    """One way a local directory can hold a task: for each split, the file(s) found (possibly none)."""

    name: str
    directory: Path
    files: dict[str, list[Path]]

    @property
    def complete(self) -> bool:
        return all(self.files.values())

    @property
    def found(self) -> int:
        return sum(bool(f) for f in self.files.values())


def _dirs(*candidates: Path) -> list[Path]:
    """Existing directories among ``candidates``, without repeats, in order."""
    out: list[Path] = []
    for d in candidates:
        if d.is_dir() and d.resolve() not in {o.resolve() for o in out}:
            out.append(d)
    return out


def _per_task_layouts(root: Path, task: Task) -> list[_Layout]:
    """(c2) ``DIR/<task>/<split>.<ext>`` in the hub schema (what the smoke data writes); DIR may be the task dir."""
    layouts = []
    for d in _dirs(root / task.name, root):
        files = {}
        for split in _splits(task):
            hit = next((d / f"{split}.{ext}" for ext in LOCAL_EXTENSIONS if (d / f"{split}.{ext}").is_file()), None)
            files[split] = [hit] if hit else []
        layouts.append(_Layout("per-task", d, files))
    return layouts


def _snapshot_layouts(root: Path, task: Task) -> list[_Layout]:
    """(c1) A hub snapshot: ``DIR/<config>/<split>-NNNNN-of-NNNNN.parquet`` (also the ``<split>/NNNN.parquet``
    layout of the hub's parquet conversion); DIR may be the config folder itself."""
    config = task.hub_config or SQUAD_HUB_CONFIG
    layouts = []
    for d in _dirs(root / config, root / task.name / config, root):
        files = {split: sorted(d.glob(f"{split}-*.parquet")) or sorted((d / split).glob("*.parquet"))
                 for split in _splits(task)}
        layouts.append(_Layout("hub-snapshot", d, files))
    return layouts


def _original_layouts(root: Path, task: Task) -> list[_Layout]:
    """(c3) The original distribution: GLUE's ``DIR/<GLUE dir>/*.tsv``, or SQuAD's ``train-v1.1.json`` and
    ``dev-v1.1.json``."""
    if task.kind == "span":
        names, dirs = SQUAD_JSON_FILES, _dirs(root / task.name, root / "SQuAD", root)
    else:
        names, dirs = GLUE_TSV_FILES[task.name], _dirs(root / GLUE_TSV_DIRS[task.name], root / task.name, root)
    return [_Layout("original", d, {split: [d / name] if (d / name).is_file() else [] for split, name in names.items()})
            for d in dirs]


def _expected_files(task: Task) -> str:
    """The three accepted local layouts of ``task``, with exact file names (for error messages and docs)."""
    splits = _splits(task)
    config = task.hub_config or SQUAD_HUB_CONFIG
    per_task = ", ".join(f"DIR/{task.name}/{s}.jsonl" for s in splits)
    snapshot = ", ".join(f"DIR/{config}/{s}-00000-of-00001.parquet" for s in splits)
    if task.kind == "span":
        original = ", ".join(f"DIR/{name}" for name in SQUAD_JSON_FILES.values())
        original_what = "the official SQuAD v1.1 JSON files"
    else:
        original = ", ".join(f"DIR/{GLUE_TSV_DIRS[task.name]}/{name}" for name in GLUE_TSV_FILES[task.name].values())
        original_what = "the original GLUE distribution (download_glue_data.py)"
    return (f"  (1) per-task files in the hub schema: {per_task} (.json, .parquet or .csv also accepted);\n"
            f"  (2) a hub snapshot (hf download {task.hub_path} --repo-type dataset --local-dir DIR): {snapshot};\n"
            f"  (3) {original_what}: {original}.\n"
            f"DIR may also be the folder that holds the files itself.")


def _unavailable(task: Task, source: str, reason: str) -> DatasetUnavailableError:
    return DatasetUnavailableError(
        f"{_display_name(task)} is not available from {source!r}: {reason}.\n"
        f"To fix, pass as the data source a directory DIR laid out in one of these ways:\n{_expected_files(task)}\n"
        f"With hub access, the hub id {_hub_label(task)} works instead (source {HUB_SOURCE!r}). Passing no source "
        f"uses the built-in smoke data, which is a smoke test, not a benchmark.")


def _find_local(root: Path, task: Task, source: str) -> _Layout:
    """The first complete layout under ``root`` (per-task, then hub snapshot, then original); else a precise error.

    Only file existence is checked here, so a wrong directory fails before anything is read.
    """
    if not root.is_dir():
        raise _unavailable(task, source, f"{root} is not a directory" if root.exists() else f"{root} does not exist")
    layouts = [*_per_task_layouts(root, task), *_snapshot_layouts(root, task), *_original_layouts(root, task)]
    for layout in layouts:
        if layout.complete:
            return layout
    partial = max(layouts, key=lambda lay: lay.found, default=None)
    if partial is None or partial.found == 0:
        raise _unavailable(task, source, f"no known layout found in {root}")
    missing = [split for split, files in partial.files.items() if not files]
    raise _unavailable(task, source, f"{root} looks like the {partial.name} layout (in {partial.directory}) but "
                                     f"lacks the split(s) {', '.join(missing)}")


def _load_local(layout: _Layout, task: Task, cache_dir: Path | None) -> datasets.DatasetDict:
    if layout.name == "original":
        return _load_squad_json(layout, cache_dir) if task.kind == "span" else _load_glue_tsv(layout, task, cache_dir)
    out = {}
    for split, files in layout.files.items():
        ext = files[0].name.rsplit(".", 1)[1]
        loaded = datasets.load_dataset(_LOADER[ext], data_files={split: [str(f) for f in files]},
                                       cache_dir=_str(cache_dir))
        out[split] = loaded[split]
    return datasets.DatasetDict(out)


def _tsv_rows(batch: dict[str, list[Any]], *, columns: Sequence[str], fmt: _TsvFormat,
              out_names: Sequence[str], labels: Mapping[str, int] | None, where: str) -> dict[str, list[Any]]:
    """Pick the reference processors' columns by position and map label strings to the hub's integer labels."""
    out = {name: batch[columns[i]] for name, i in zip(out_names, fmt.text_columns)}
    raw = batch[columns[fmt.label_column]]
    if labels is None:
        out["label"] = [float(v) for v in raw]
    else:
        bad = sorted({v for v in raw if v.strip() not in labels})
        if bad:
            raise ValueError(f"{where}: unknown label(s) {bad[:5]}; expected one of {sorted(labels)}")
        out["label"] = [labels[v.strip()] for v in raw]
    return out


def _load_glue_tsv(layout: _Layout, task: Task, cache_dir: Path | None) -> datasets.DatasetDict:
    """The original GLUE TSVs, read as the reference's processors read them (reference-impl §7.1).

    No quoting (``csv.reader(delimiter="\\t", quotechar=None)`` in the processors; GLUE sentences contain stray
    quotes), no NA detection (a sentence "NA" stays a string), every column a string. CoLA has no header. Label
    strings map to the hub's integers: CoLA/SST-2/MRPC ``0``/``1``; RTE ``entailment``/``not_entailment`` -> 0/1;
    MNLI ``entailment``/``neutral``/``contradiction`` -> 0/1/2 (the hub's ClassLabel order); STS-B's score stays a
    float. ``idx`` is the row number, as on the hub.
    """
    fmt = _TSV_FORMATS[task.name]
    if task.kind == "regression":
        labels = None
    elif task.name in ("rte", "mnli"):
        labels = {name: i for i, name in enumerate(LABEL_NAMES[task.name])}
    else:
        labels = {str(i): i for i in range(len(LABEL_NAMES[task.name]))}
    out = {}
    for split, (path,) in layout.files.items():
        with path.open(encoding="utf-8-sig") as f:  # a BOM before MRPC's "Quality" is harmless
            first = f.readline().rstrip("\r\n").split("\t")
        # Our own column names (header row, if any, skipped): only positions matter, as in the processors.
        names = [f"column_{i}" for i in range(len(first))]
        kwargs: dict[str, Any] = {"sep": "\t", "quoting": csv.QUOTE_NONE, "keep_default_na": False,
                                  "na_filter": False, "header": 0 if fmt.header else None, "column_names": names,
                                  "features": datasets.Features({n: datasets.Value("string") for n in names})}
        raw = datasets.load_dataset("csv", data_files={split: str(path)}, cache_dir=_str(cache_dir),
                                    **kwargs)[split]
        rows = raw.map(_tsv_rows, batched=True, remove_columns=raw.column_names,
                       fn_kwargs={"columns": names, "fmt": fmt, "out_names": task.text_fields, "labels": labels,
                                  "where": str(path)},
                       desc=f"Reading {path.name}")
        out[split] = rows.add_column("idx", list(range(len(rows))))
    return datasets.DatasetDict(out)


def _flatten_squad(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """SQuAD's nested ``data[].paragraphs[].qas[]`` to one row per question, as the hub's ``squad.py`` does
    (contexts and answers verbatim, not stripped)."""
    out: dict[str, list[Any]] = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for title, paragraphs in zip(batch["title"], batch["paragraphs"]):
        for paragraph in paragraphs:
            for qa in paragraph["qas"]:
                out["id"].append(qa["id"])
                out["title"].append(title or "")
                out["context"].append(paragraph["context"])
                out["question"].append(qa["question"])
                out["answers"].append({"text": [a["text"] for a in qa["answers"]],
                                       "answer_start": [a["answer_start"] for a in qa["answers"]]})
    return out


def _load_squad_json(layout: _Layout, cache_dir: Path | None) -> datasets.DatasetDict:
    out = {}
    for split, (path,) in layout.files.items():
        articles = datasets.load_dataset("json", data_files={split: str(path)}, field="data",
                                         cache_dir=_str(cache_dir))[split]
        out[split] = articles.map(_flatten_squad, batched=True, remove_columns=articles.column_names,
                                  desc=f"Flattening {path.name}")
    return datasets.DatasetDict(out)


def _conform(ds: datasets.Dataset, task: Task, where: str) -> datasets.Dataset:
    """Cast to the hub Features (column order included); add ``idx`` (row number) to a GLUE file that lacks it."""
    features = hub_features(task)
    if "idx" in features and "idx" not in ds.column_names:
        ds = ds.add_column("idx", list(range(len(ds))))
    missing = [c for c in features if c not in ds.column_names]
    if missing:
        raise ValueError(f"{where} lacks the column(s) {', '.join(missing)} of the hub schema "
                         f"({', '.join(features)}); it has {', '.join(ds.column_names)}")
    ds = ds.select_columns(list(features))
    return ds if ds.features == features else ds.cast(features)  # hub data is already cast: skip the rewrite


# --- entry point -------------------------------------------------------------------------------------------------
def load_task_dataset(task: Task, source: str | None = None, *,
                      cache_dir: Path | None = None) -> datasets.DatasetDict:
    """The raw splits of ``task`` (``task.train_split`` and every dev split) in the task's hub schema.

    ``source``: ``None`` for the built-in smoke data; ``"hub"`` (or any hub id, e.g. ``"nyu-mll/glue"``) to load
    from the hub with ``task.hub_config``; or a local directory in one of the layouts listed in ``docs/data.md``
    (per-task files, hub snapshot, original GLUE TSVs / SQuAD JSON). Whatever the source, the result is cast to
    :func:`hub_features`. Raises :class:`DatasetUnavailableError` (naming the dataset, the hub id and the files to
    provide) when the data is not there — for a local directory before anything is read.
    """
    if source is None:
        from tamt_core.data.smoke_tasks import smoke_tasks_dir

        source = str(smoke_tasks_dir())
    path = Path(source).expanduser()
    if source != HUB_SOURCE and is_local(source):
        layout = _find_local(path, task, source)
        log.info("loading %s from %s (%s layout)", task.name, layout.directory, layout.name)
        raw = _load_local(layout, task, cache_dir)
        where = f"{task.name} data in {layout.directory}"
    else:
        hub_id = task.hub_path if source == HUB_SOURCE else source
        try:
            raw = datasets.load_dataset(hub_id, task.hub_config, cache_dir=_str(cache_dir))
            missing = [s for s in _splits(task) if s not in raw]
            if missing:
                raise KeyError(f"no split(s) {', '.join(missing)}; it has {', '.join(raw)}")
        except (OSError, ValueError, KeyError) as err:  # offline (ConnectionError), not found, bad config/split
            reason = (f"loading the hub id {hub_id!r}" + (f" (config {task.hub_config!r})" if task.hub_config else "")
                      + f" failed ({type(err).__name__}: {err})")
            raise _unavailable(task, source, reason) from err
        where = f"hub dataset {hub_id!r}"
    return datasets.DatasetDict({split: _conform(raw[split], task, f"{where} ({split})") for split in _splits(task)})


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


# --- GLUE tokenization (reference-impl §7.1) -----------------------------------------------------------------------
def _tokenize_glue_batch(batch: dict[str, list[Any]], *, tokenizer: PreTrainedTokenizerBase,
                         text_fields: Sequence[str], max_length: int, columns: Sequence[str],
                         regression: bool) -> dict[str, list[Any]]:
    enc = tokenizer(*(batch[f] for f in text_fields), truncation="longest_first", max_length=max_length,
                    verbose=False)
    out = {k: enc[k] for k in columns}
    out["labels"] = [float(v) for v in batch["label"]] if regression else batch["label"]
    return out


def tokenize_glue(split: datasets.Dataset, task: Task, tokenizer: PreTrainedTokenizerBase, *,
                  max_length: int = 128, cache_dir: Path | None = None) -> datasets.Dataset:
    """Token ids of a GLUE split: ``input_ids``, ``attention_mask``, ``token_type_ids`` (if the tokenizer makes
    them) and ``labels`` (int; float32 for STS-B). The raw columns are removed.

    As the reference (reference-impl §7.1): ``[CLS] A [SEP] (B [SEP])`` with the default ``longest_first``
    truncation at ``max_length`` (128 in Tab. 1), which trims the longer of A and B one token at a time. Rows are
    *not* padded here: a collator pads each batch to its longest row. The reference pads every row to 128; with
    BERT's attention mask the padded keys get an additive −∞-like bias, so real tokens' outputs (and the [CLS]
    logits) are the same up to float rounding, and batches are cheaper. Cached as Arrow under ``cache_dir``
    (datasets' default cache otherwise), keyed on the tokenizer, the parameters and the split's fingerprint.
    """
    if task.kind == "span":
        raise ValueError(f"{task.name} is a span task; tokenize_glue handles the GLUE tasks only")
    probe = tokenizer(*(["a"] * len(task.text_fields)))
    columns = [c for c in _GLUE_TOKEN_COLUMNS if c in probe]
    regression = task.kind == "regression"
    features = datasets.Features({
        **{c: datasets.List(datasets.Value("int32" if c == "input_ids" else "int8")) for c in columns},
        "labels": datasets.Value("float32" if regression else "int64"),
    })
    return split.map(
        _tokenize_glue_batch, batched=True, remove_columns=split.column_names, features=features,
        fn_kwargs={"tokenizer": tokenizer, "text_fields": task.text_fields, "max_length": max_length,
                   "columns": columns, "regression": regression},
        desc=f"Tokenizing {task.name}",
        cache_file_name=arrow_cache_file(cache_dir, _CACHE_VERSION, f"glue-{task.name}", split._fingerprint,
                                         tokenizer, max_length, task.text_fields, columns))


# --- low-data subsets (paper Fig. 7) -----------------------------------------------------------------------------
def subset_indices(num_examples: int, size: int, seed: int, *, task_name: str = "the task") -> list[int]:
    """Indices of the low-data training subset of ``size`` examples for fine-tuning seed ``seed``.

    The reference's ``glue_trans_few.py`` calls ``random_split(train, [N, rest], generator=manual_seed(seed))``,
    i.e. the first ``N`` entries of ``torch.randperm(len(train))`` under the fine-tuning seed: uniform, not
    stratified, a different subset per seed and the same one across methods (paper Fig. 7; reference-impl §7.4,
    check vector 29). ``task_name`` only names the task in the error message.
    """
    if not 1 <= size <= num_examples:
        raise SettingError("train_size", f"train_size {size} must be between 1 and {num_examples} (the size of "
                                         f"{task_name}'s training set)")
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed))
    return order[:size].tolist()
