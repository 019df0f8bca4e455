"""What a sweep reads from the Hugging Face hubs, fetched once into a shared cache, and checked before an offline sweep.

Compute nodes of many clusters (Slurm sites above all) cannot reach the hubs; only login nodes can. A sweep's plan
names every model and data set it reads, so they can be fetched ahead of time:

    python -m sweeps prefetch --all --preset paper --cache /shared/hf      # on a login node
    HF_HOME=/shared/hf HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python -m sweeps --all --preset paper

:func:`needs` walks a plan and lists the :class:`Item` s it names on the hubs: models (weights, config and tokenizer),
the pre-training corpus and the downstream data sets, each as ``tamt_core`` loads it; local directories and the
built-in model and data need nothing. :func:`fetch` puts each into the cache with the libraries' own calls
(``huggingface_hub.snapshot_download`` for a model's files, ``datasets.load_dataset`` with tamt's arguments for a data
set), so the cache holds exactly what tamt looks up later. :func:`missing` asks the same libraries, without the
network, which items a cache lacks, and :func:`check_offline_inputs` stops an offline sweep before Ray starts when
any is missing, naming each and the prefetch command.
"""

from __future__ import annotations

import argparse
import contextvars
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

from tamt_core.hub import corpus_dataset, model_repo, task_dataset

from orchestrator.plan import Plan, PlanError
from orchestrator.specs import DenseLossSpec, FinetuneSpec, SearchSpec, Spec

Kind = Literal["model", "corpus", "dataset"]
KINDS: tuple[Kind, ...] = ("model", "corpus", "dataset")
LABELS: dict[str, str] = {"model": "model", "corpus": "pre-training corpus", "dataset": "data set"}

CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt")
"""A model repository's tokenizer files, as transformers' tokenizers read them (plus any top-level ``*.model``, the
SentencePiece vocabularies of XLM-R and CamemBERT)."""
SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
TORCH_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class Item:
    """One thing a sweep reads from a hub: a ``model`` (hub id), the pre-training ``corpus`` or a downstream
    ``dataset`` (hub id and config, as ``tamt_core`` passes them to ``datasets.load_dataset``)."""

    kind: Kind
    id: str
    config: str | None = None

    def __str__(self) -> str:
        return f"{LABELS[self.kind]} {self.id}" + (f" ({self.config})" if self.config else "")

    def sort_key(self) -> tuple[int, str, str]:
        return KINDS.index(self.kind), self.id, self.config or ""


class PrefetchError(RuntimeError):
    """Some items could not be fetched; the message names each and why."""


# --- what a plan reads ---------------------------------------------------------------------------------------------
def spec_items(spec: Spec) -> Iterator[Item]:
    """What one trial reads from the hubs, as ``tamt_core.hub`` says its loaders do. Every spec's model counts, as
    ``orchestrator.trial.check_models`` reads each one's config before a sweep (a similarity trial itself reads only
    masks)."""
    model = model_repo(spec.model)
    if model is not None:
        yield Item("model", model)
    if isinstance(spec, SearchSpec | DenseLossSpec):
        corpus = corpus_dataset(spec.data)
        if corpus is not None:
            yield Item("corpus", *corpus)
    elif isinstance(spec, FinetuneSpec):
        data = task_dataset(spec.config.task, spec.config.data)
        if data is not None:
            yield Item("dataset", *data)


def needs(plan: Plan | Iterable[Spec]) -> list[Item]:
    """Every hub item the trials of ``plan`` read, once each: models, then the corpus, then data sets."""
    specs = plan.specs() if isinstance(plan, Plan) else plan
    return sorted({item for spec in specs for item in spec_items(spec)}, key=Item.sort_key)


# --- where the cache is -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheDirs:
    """Where models (``huggingface_hub``'s cache) and data sets (``datasets``' cache) live: under one ``home`` as
    ``home/hub`` and ``home/datasets`` (what ``HF_HOME=home`` gives both libraries), or where
    ``HF_HUB_CACHE`` / ``HF_DATASETS_CACHE`` moved them."""

    home: Path
    hub: Path
    datasets: Path

    @classmethod
    def of(cls, cache: str | Path | None = None) -> CacheDirs:
        """``cache`` as ``HF_HOME``; ``None``: where this process's libraries cache (read at call time)."""
        if cache is not None:
            home = Path(cache).expanduser().resolve()
            return cls(home, home / "hub", home / "datasets")
        import datasets
        from huggingface_hub import constants

        return cls(Path(constants.HF_HOME), Path(constants.HF_HUB_CACHE), Path(datasets.config.HF_DATASETS_CACHE))

    @property
    def standard(self) -> bool:
        return self.hub == self.home / "hub" and self.datasets == self.home / "datasets"

    def offline_env(self) -> str:
        """The environment of a compute node that reads this cache with the hubs offline."""
        where = f"HF_HOME={self.home}" if self.standard else (f"HF_HUB_CACHE={self.hub} "
                                                              f"HF_DATASETS_CACHE={self.datasets}")
        return f"{where} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1"


# --- is it there? (the libraries' own cache look-ups, no network) ---------------------------------------------------
def model_files(repo_files: Iterable[str]) -> list[str]:
    """The files of a model repository that tamt loads: ``config.json``, the tokenizer's files and one format of
    weights (safetensors if the repository has them, else PyTorch's ``.bin``; shards and their index too).

    Raises:
        ValueError: the repository lacks a config or weights transformers can load.
    """
    top = [name for name in repo_files if "/" not in name]
    safetensors = [n for n in top if n in SAFETENSORS_WEIGHTS or n.startswith("model-") and n.endswith(".safetensors")]
    torch_bin = [n for n in top if n in TORCH_WEIGHTS or n.startswith("pytorch_model-") and n.endswith(".bin")]
    weights = safetensors or torch_bin
    if CONFIG_FILE not in top or not weights:
        raise ValueError(f"it has no {CONFIG_FILE} or no weights transformers loads ({', '.join(SAFETENSORS_WEIGHTS)}"
                         f", {', '.join(TORCH_WEIGHTS)}); its top-level files are {', '.join(sorted(top)) or 'none'}")
    return sorted({CONFIG_FILE, *(n for n in top if n in TOKENIZER_FILES or n.endswith(".model")), *weights})


def _model_absence(repo_id: str, hub: Path) -> str | None:
    """Why ``repo_id`` cannot be loaded offline from ``hub`` (``None``: it can).

    Where ``snapshot_download`` put the model, the cached listing of the repository says which files the model
    needs and ``snapshot_download(local_files_only=True)`` checks they are all there. Without a listing (files
    cached by ``from_pretrained``), ``try_to_load_from_cache`` must find a config, weights and a tokenizer file.
    """
    from huggingface_hub import get_cached_repo_tree, snapshot_download, try_to_load_from_cache
    from huggingface_hub.errors import CachedRepoTreeNotFoundError, IncompleteSnapshotError, LocalEntryNotFoundError

    try:
        listing = [entry.path for entry in get_cached_repo_tree(repo_id, cache_dir=hub)]
    except CachedRepoTreeNotFoundError:
        listing = None

    def cached(names: Sequence[str]) -> bool:
        return any(isinstance(try_to_load_from_cache(repo_id, name, cache_dir=hub), str) for name in names)

    if listing is not None:
        try:
            files = model_files(listing)
            snapshot_download(repo_id, cache_dir=hub, local_files_only=True, allow_patterns=files)
        except IncompleteSnapshotError:
            return f"incomplete (no {', '.join(name for name in files if not cached([name]))})"
        except (LocalEntryNotFoundError, ValueError, OSError):
            return "not in the cache"
        return None

    if not cached([CONFIG_FILE]):
        return "not in the cache"
    lacking = [what for what, names in (("weights", SAFETENSORS_WEIGHTS + TORCH_WEIGHTS),
                                        ("tokenizer", TOKENIZER_FILES)) if not cached(names)]
    return f"incomplete (no {' and no '.join(lacking)})" if lacking else None


@contextmanager
def _datasets_offline() -> Iterator[None]:
    """``datasets`` in offline mode for a look-up: it then reads only its cache, as an offline trial does (and its
    warning that it does so is kept quiet)."""
    import datasets

    offline, verbosity = datasets.config.HF_HUB_OFFLINE, datasets.utils.logging.get_verbosity()
    datasets.config.HF_HUB_OFFLINE = True
    datasets.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = offline
        datasets.utils.logging.set_verbosity(verbosity)


def _dataset_absence(item: Item, cache: Path) -> str | None:
    """Why ``datasets.load_dataset(item.id, item.config)`` would not load ``item`` offline from ``cache``."""
    import datasets

    try:
        with _datasets_offline():
            builder = datasets.load_dataset_builder(item.id, item.config, cache_dir=str(cache))
    except (OSError, ValueError, KeyError) as error:  # ConnectionError: not cached; ValueError: config not cached
        cached = str(error).split("Available configs in the cache: ")[1:]
        return "not in the cache" + (f" (its configs there: {cached[0].strip()})" if cached else "")
    return None if builder.info.splits else "incomplete (no splits recorded)"


def absence(item: Item, dirs: CacheDirs) -> str | None:
    """Why ``item`` cannot be read offline from ``dirs`` (``None``: it can)."""
    if item.kind == "model":
        return _model_absence(item.id, dirs.hub)
    return _dataset_absence(item, dirs.datasets)


def missing(items: Iterable[Item], cache: str | Path | None = None) -> list[Item]:
    """The items that ``cache`` (as ``HF_HOME``; ``None``: this process's Hugging Face caches) lacks, looked up
    without the network."""
    dirs = CacheDirs.of(cache)
    return [item for item in items if absence(item, dirs) is not None]


# --- fetching -------------------------------------------------------------------------------------------------------
def _fetch_model(repo_id: str, hub: Path) -> None:
    from huggingface_hub import HfApi, snapshot_download

    try:
        files = model_files(HfApi().list_repo_files(repo_id))
    except ValueError as error:
        raise PrefetchError(f"tamt cannot load model {repo_id}: {error}") from error
    snapshot_download(repo_id, cache_dir=hub, allow_patterns=files)


def _fetch_dataset(item: Item, cache: Path) -> None:
    import datasets

    datasets.load_dataset(item.id, item.config, cache_dir=str(cache))  # tamt's call, with cache_dir=None under HF_HOME


def fetch(items: Iterable[Item], cache: str | Path | None = None, *, out: TextIO | None = None) -> dict[Item, str]:
    """Fetch every item ``cache`` lacks into it (``HF_HOME``-style: models in ``cache/hub``, data sets in
    ``cache/datasets``; ``None``: this process's caches); returns each item's outcome (``"present"``, ``"fetched"``)
    and prints one line per item.

    Raises:
        PrefetchError: naming every item that could not be fetched and why; the others are fetched all the same.
    """
    out = out or sys.stdout
    dirs = CacheDirs.of(cache)
    outcome: dict[Item, str] = {}
    failed: dict[Item, str] = {}
    unreachable = False
    for item in items:
        if absence(item, dirs) is None:
            outcome[item] = "present"
            print(f"  already present  {item}", file=out, flush=True)
            continue
        if unreachable:  # each try waits for the libraries' retries: one unreachable hub is enough
            failed[item] = "not tried, the hub could not be reached"
            print(f"  not fetched      {item}", file=out, flush=True)
            continue
        print(f"  fetching         {item} ...", file=out, flush=True)
        try:
            _fetch_model(item.id, dirs.hub) if item.kind == "model" else _fetch_dataset(item, dirs.datasets)
        except Exception as error:  # any failure of one item is reported with the others' at the end
            unreachable = _unreachable(error)
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            failed[item] = f"{type(error).__name__}: {first_line}"
            print(f"  failed           {item}: {failed[item]}", file=out, flush=True)
            continue
        reason = absence(item, dirs)
        if reason is not None:  # fetched, yet the offline look-up does not find it: say so now, not on a compute node
            failed[item] = f"fetched, but an offline look-up finds it {reason}"
            print(f"  failed           {item}: {failed[item]}", file=out, flush=True)
            continue
        outcome[item] = "fetched"
        print(f"  fetched          {item}", file=out, flush=True)
    if failed:
        raise PrefetchError(f"could not fetch {len(failed)} item(s) into {dirs.home}:\n"
                            + "".join(f"  {item}: {why}\n" for item, why in failed.items()) + _fetch_hint())
    return outcome


def _unreachable(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) says the hub could not be reached: offline mode, a refused or timed-out
    connection (``ConnectionError``, ``httpx``'s transport errors)."""
    seen: BaseException | None = error
    while seen is not None:
        transport = any(cls.__name__ == "TransportError" and cls.__module__.startswith("httpx")
                        for cls in type(seen).__mro__)
        if transport or isinstance(seen, ConnectionError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _fetch_hint() -> str:
    offline = [name for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
               if os.environ.get(name, "").upper() in {"1", "ON", "YES", "TRUE"}]
    if offline:
        return (f"{' and '.join(offline)} {'is' if len(offline) == 1 else 'are'} set here: prefetch must run where the "
                "hubs can be reached (a login node) and without them. Items already present were kept.")
    return ("Check that this machine reaches the Hugging Face hub (HF_ENDPOINT, proxy, token for gated models) and "
            "rerun: items already present are kept, only the rest is fetched.")


# --- the offline check before a sweep ----------------------------------------------------------------------------
def offline_modes() -> tuple[bool, bool]:
    """Whether models and whether data sets are read offline: ``huggingface_hub``'s ``HF_HUB_OFFLINE`` (or
    ``TRANSFORMERS_OFFLINE``) and ``datasets``' (``HF_DATASETS_OFFLINE``, else the hub's), as the libraries read
    them."""
    import datasets
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE), bool(datasets.config.HF_HUB_OFFLINE)


_INVOCATION: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("tamt_sweep_invocation",
                                                                                        default=None)


@contextmanager
def invoked_as(sweeps: str, preset: str) -> Iterator[None]:
    """While a sweep runs: how it was selected (``main_results``, ``--all``, ``a b``) and its preset, for the
    prefetch command that :func:`check_offline_inputs` prints."""
    token = _INVOCATION.set((sweeps, preset))
    try:
        yield
    finally:
        _INVOCATION.reset(token)


def prefetch_command(cache: Path) -> str:
    sweeps, preset = _INVOCATION.get() or ("<sweeps>", "<preset>")
    return f"python -m sweeps prefetch {sweeps} --preset {preset} --cache {cache}"


def check_offline_inputs(plan: Plan | Iterable[Spec]) -> None:
    """With the hubs offline (``HF_HUB_OFFLINE=1``, ``HF_DATASETS_OFFLINE=1``), every model and data set the trials
    of ``plan`` read is in the Hugging Face cache; online, nothing is checked (the trials fetch what they need).

    Raises:
        PlanError: naming each missing item and the ``python -m sweeps prefetch`` command that fetches them.
    """
    hub_offline, datasets_offline = offline_modes()
    if not (hub_offline or datasets_offline):
        return
    items = [item for item in needs(plan) if (hub_offline if item.kind == "model" else datasets_offline)]
    if not items:
        return
    dirs = CacheDirs.of()
    lacking = {item: reason for item in items if (reason := absence(item, dirs)) is not None}
    if not lacking:
        return
    flags = " and ".join(name for name, on in (("HF_HUB_OFFLINE", hub_offline),
                                               ("HF_DATASETS_OFFLINE", datasets_offline)) if on)
    where = (f"HF_HOME={dirs.home}" if dirs.standard
             else f"HF_HUB_CACHE={dirs.hub}, HF_DATASETS_CACHE={dirs.datasets}, which override HF_HOME={dirs.home}")
    raise PlanError(
        f"the Hugging Face hubs are offline here ({flags}) and the cache ({where}) lacks {len(lacking)} of the "
        f"{len(items)} models and data sets this sweep reads:\n"
        + "".join(f"  {item}: {reason}\n" for item, reason in lacking.items())
        + "Fetch them on a machine that reaches the hubs (a login node), into the cache the compute nodes share:\n"
        f"  {prefetch_command(dirs.home)}\n"
        f"then run the sweep with {CacheDirs.of(dirs.home).offline_env()}"
        + ("" if dirs.standard else " and without HF_HUB_CACHE and HF_DATASETS_CACHE")
        + " (docs/cluster.md, \"Compute nodes without internet\")")


# --- python -m sweeps prefetch -------------------------------------------------------------------------------------
def main(argv: Sequence[str], presets: Mapping, *, sweeps: str, out: TextIO | None = None) -> int:
    """``python -m sweeps prefetch``: ``presets`` are the selected sweeps' (united), ``sweeps`` how they were named
    on the command line. Returns the exit code (1: some items failed, 2: bad input)."""
    from orchestrator.cli import plan_of
    from orchestrator.study import TamtStudy

    out = out or sys.stdout
    parser = argparse.ArgumentParser(
        prog=f"python -m sweeps prefetch {sweeps}",
        description="Fetch every model and data set the selected sweeps read from the Hugging Face hubs into one "
                    "cache, for compute nodes without internet.")
    default = "paper" if "paper" in presets else sorted(presets)[0]
    parser.add_argument("--preset", choices=sorted(presets), default=default,
                        help=f"the preset whose plan is walked (default {default}; smoke reads nothing from the hubs)")
    parser.add_argument("--cache", metavar="DIR",
                        help="the shared cache, used as HF_HOME: models in DIR/hub, data sets in DIR/datasets "
                             "(default: this machine's HF_HOME)")
    parser.add_argument("--dry-run", action="store_true", help="list the items only; fetch nothing")
    args = parser.parse_args(argv)
    try:
        declarations = presets[args.preset]()
        plan = plan_of([d for d in declarations if not isinstance(d, TamtStudy)])
        plan = plan.merge(Plan.of(d.spec(d.midpoint()) for d in declarations if isinstance(d, TamtStudy)))
    except (PlanError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    items = needs(plan)
    dirs = CacheDirs.of(args.cache)
    print(f"[tamt] prefetch {sweeps}, preset {args.preset}: {len(items)} items from the Hugging Face hubs"
          + ("" if args.dry_run else f" into {dirs.home}") + (" (local directories and the built-in model and data "
                                                             "need nothing)" if not items else ""), file=out)
    if args.dry_run:
        for item in items:
            print(f"  {item}", file=out)
        return 0
    try:
        fetch(items, args.cache, out=out)
    except PrefetchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"[tamt] every item is in the cache; on the compute nodes set\n  {dirs.offline_env()}"
          + ("\n(and leave HF_HUB_CACHE and HF_DATASETS_CACHE unset there: they override HF_HOME)" if dirs.standard
             else ""), file=out)
    return 0
