"""``python -m sweeps prefetch`` and the offline check: what a plan reads from the hubs, a cache that holds it (built
with the libraries' own layouts: a hub snapshot with its cached listing, a ``datasets`` builder's Arrow cache), an
offline sweep that stops before Ray starts, and fetching from a hub that cannot be reached. No network is used."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import prefetch
from orchestrator.cli import plan_of
from orchestrator.plan import Plan, PlanError
from orchestrator.prefetch import CacheDirs, Item, PrefetchError, check_offline_inputs, fetch, missing, needs
from orchestrator.specs import DenseLossSpec, FinetuneSpec, SearchSpec
from orchestrator.storage import Storage
from orchestrator.study import TamtStudy
from sweeps import SWEEPS, presets_of
from sweeps.__main__ import main as sweeps_main
from tamt_core.finetune import FinetuneConfig
from tamt_core.models import BUILTIN_MODEL_NAME
from tamt_core.search.config import SearchConfig

ROOT = Path(__file__).resolve().parent.parent
BERT, ROBERTA, WIKITEXT = "bert-base-uncased", "roberta-base", "Salesforce/wikitext"
COMMIT = "86b5e0934494bd15c9632b12f734a8a67f723594"
BERT_REPO_FILES = ["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack",
                   "rust_model.ot", "model.onnx", "coreml/fill-mask/float32_model.mlpackage/Manifest.json",
                   "tokenizer.json", "tokenizer_config.json", "vocab.txt", "README.md", "LICENSE", ".gitattributes"]
"""bert-base-uncased's files on the hub: tamt needs five of them."""


def preset_items(name: str, preset: str) -> list[Item]:
    declarations = presets_of(name)[preset]()
    plan = plan_of([d for d in declarations if not isinstance(d, TamtStudy)])
    return needs(plan.merge(Plan.of(d.spec(d.midpoint()) for d in declarations if isinstance(d, TamtStudy))))


def glue(config: str) -> Item:
    return Item("dataset", "nyu-mll/glue", config)


MODELS = [Item("model", BERT), Item("model", ROBERTA)]
CORPUS = Item("corpus", WIKITEXT, "wikitext-103-raw-v1")
SQUAD = Item("dataset", "rajpurkar/squad", None)


# --- what a plan reads --------------------------------------------------------------------------------------------

def test_main_results_paper_preset_needs_two_models_wikitext_and_the_seven_tasks_data():
    assert preset_items("main_results", "paper") == [
        *MODELS, CORPUS, *(glue(task) for task in ("cola", "mnli", "mrpc", "rte", "sst2", "stsb")), SQUAD]


def test_low_data_paper_preset_needs_its_own_subset():
    assert preset_items("low_data", "paper") == [MODELS[0], CORPUS, glue("cola"), glue("mnli"), glue("sst2"), SQUAD]


def test_smoke_presets_need_nothing_from_the_hubs():
    for name in SWEEPS:
        assert preset_items(name, "smoke") == [], name


def test_items_follow_the_sources_tamt_core_loads_from(tmp_path, tiny_bert_dir):
    from tamt_core.data.smoke_tasks import smoke_tasks_dir

    def finetune(task, data, model=BERT):
        return FinetuneSpec(FinetuneConfig(task=task, seed=1, model=model, data=data))

    def search(model, data):
        return SearchSpec(model, SearchConfig.of(method="omp", sparsity=0.5, seed=1), data)

    specs = [
        search(str(tiny_bert_dir), str(tmp_path)),      # a model directory; a corpus directory (even a missing one)
        search(BUILTIN_MODEL_NAME, None),               # the built-in model and corpus
        search("./no/such/model", None),                # a missing directory is not a hub id (check_models says so)
        finetune("squad", "hub"),                       # the task's own hub dataset
        finetune("mnli", "someone/glue-mirror"),        # another hub id, with the task's config
        finetune("rte", str(smoke_tasks_dir())),        # a local task directory
        finetune("rte", None),                          # the smoke data
        DenseLossSpec(ROBERTA, WIKITEXT),
        finetune("squad", "hub", model=ROBERTA),        # named twice, listed once
    ]
    assert needs(specs) == [Item("model", BERT), Item("model", ROBERTA), CORPUS,
                            Item("dataset", "rajpurkar/squad"), Item("dataset", "someone/glue-mirror", "mnli")]
    assert str(CORPUS) == "pre-training corpus Salesforce/wikitext (wikitext-103-raw-v1)"


def test_prefetch_dry_run_lists_the_items_of_the_paper_preset_by_default(capsys):
    assert sweeps_main(["prefetch", "tune_tamt", "--dry-run"]) == 0  # a study's searches count too
    out = capsys.readouterr().out
    assert out.splitlines() == ["[tamt] prefetch tune_tamt, preset paper: 2 items from the Hugging Face hubs",
                                "  model bert-base-uncased",
                                "  pre-training corpus Salesforce/wikitext (wikitext-103-raw-v1)"]


# --- a cache, laid out as the libraries lay it out -------------------------------------------------------------------

def put_model(hub: Path, repo_id: str, source: Path, *, listing: list[str] | None = None) -> Path:
    """``repo_id`` in ``hub`` as ``snapshot_download`` leaves it: ``refs/main``, the snapshot of ``source``'s files
    and, with ``listing``, the repository's cached file listing (which ``snapshot_download`` writes and reads)."""
    from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache
    from huggingface_hub.file_download import repo_folder_name

    storage = hub / repo_folder_name(repo_id=repo_id, repo_type="model")
    snapshot = storage / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, snapshot / name)
    vocab = json.loads((source / "tokenizer.json").read_text())["model"]["vocab"]
    (snapshot / "vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n")
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(COMMIT)
    if listing is not None:
        write_tree_cache(str(storage), COMMIT, {name: TreeCacheEntry(size=1, blob_id="0" * 40) for name in listing})
    return snapshot


def put_glue(datasets_cache: Path, task: str) -> None:
    """The Arrow cache ``datasets.load_dataset("nyu-mll/glue", task)`` leaves, written by a ``datasets`` builder
    with the hub dataset's names from tamt's smoke data of ``task`` (in the hub schema)."""
    import datasets
    from datasets.builder import Key

    from tamt_core.data.downstream import hub_features
    from tamt_core.data.smoke_tasks import smoke_tasks_dir
    from tamt_core.tasks import TASKS

    class Glue(datasets.GeneratorBasedBuilder):
        BUILDER_CONFIGS = [datasets.BuilderConfig(name=task)]

        def _info(self):
            return datasets.DatasetInfo(features=hub_features(TASKS[task]))

        def _split_generators(self, dl_manager):
            files = smoke_tasks_dir() / task
            return [datasets.SplitGenerator(name=split, gen_kwargs={"path": files / f"{split}.jsonl"})
                    for split in ("train", "validation")]

        def _generate_examples(self, path):
            with open(path) as lines:
                for i, line in enumerate(lines):
                    yield Key(0, i), json.loads(line)

    Glue(cache_dir=str(datasets_cache), config_name=task, repo_id="nyu-mll/glue", dataset_name="glue",
         hash=COMMIT).download_and_prepare()


@pytest.fixture(scope="module")
def builtin_dir() -> Path:
    from tamt_core.smoke import builtin_model_dir

    return builtin_model_dir()


@pytest.fixture(scope="module")
def cache(tmp_path_factory, builtin_dir) -> Path:
    """An HF_HOME with bert-base-uncased (the built-in model's files under its name) and GLUE RTE."""
    home = tmp_path_factory.mktemp("hf-home")
    put_model(home / "hub", BERT, builtin_dir, listing=BERT_REPO_FILES)
    put_glue(home / "datasets", "rte")
    return home


def test_items_in_the_cache_are_not_missing(cache):
    items = [Item("model", BERT), glue("rte"), Item("model", ROBERTA), glue("cola"), CORPUS, SQUAD]
    assert missing(items, cache) == items[2:]
    reasons = {item: prefetch.absence(item, CacheDirs.of(cache)) for item in items}
    assert reasons[glue("cola")] == "not in the cache (its configs there: ['rte'])"
    assert reasons[Item("model", ROBERTA)] == "not in the cache"


def test_fetch_keeps_what_is_present_without_asking_the_hub(cache, capsys):
    assert fetch([Item("model", BERT), glue("rte")], cache) == {Item("model", BERT): "present", glue("rte"): "present"}
    assert capsys.readouterr().out.count("already present") == 2


def test_a_model_snapshot_missing_a_file_it_needs_is_missing(tmp_path, builtin_dir):
    snapshot = put_model(tmp_path / "hub", BERT, builtin_dir, listing=BERT_REPO_FILES)
    (snapshot / "tokenizer.json").unlink()
    assert missing([Item("model", BERT)], tmp_path) == [Item("model", BERT)]
    assert prefetch.absence(Item("model", BERT), CacheDirs.of(tmp_path)) == "incomplete (no tokenizer.json)"


def test_a_model_cached_file_by_file_counts_when_config_weights_and_tokenizer_are_there(tmp_path, builtin_dir):
    snapshot = put_model(tmp_path / "hub", BERT, builtin_dir)  # no listing: files from from_pretrained
    assert missing([Item("model", BERT)], tmp_path) == []
    (snapshot / "model.safetensors").unlink()
    assert prefetch.absence(Item("model", BERT), CacheDirs.of(tmp_path)) == "incomplete (no weights)"


def test_model_files_are_config_tokenizer_and_one_kind_of_weights():
    assert prefetch.model_files(BERT_REPO_FILES) == ["config.json", "model.safetensors", "tokenizer.json",
                                                     "tokenizer_config.json", "vocab.txt"]
    roberta = ["config.json", "dict.txt", "merges.txt", "pytorch_model.bin", "tokenizer.json", "vocab.json"]
    assert prefetch.model_files(roberta) == ["config.json", "merges.txt", "pytorch_model.bin", "tokenizer.json",
                                             "vocab.json"]
    with pytest.raises(ValueError, match="no config.json or no weights"):
        prefetch.model_files(["config.json", "tf_model.h5"])


@pytest.mark.slow
def test_the_cache_serves_tamt_offline_exactly_where_it_looks(cache, tmp_path):
    """With only HF_HOME pointing at the cache, as on a compute node: the check passes for what is there, tamt
    reads the model and the data from it, and the check names what is not."""
    script = f"""
from orchestrator.plan import PlanError
from orchestrator.prefetch import check_offline_inputs
from orchestrator.specs import FinetuneSpec
from orchestrator.trial import check_models
from tamt_core.data.downstream import load_task_dataset
from tamt_core.finetune import FinetuneConfig
from tamt_core.models import load_pretrained
from tamt_core.tasks import TASKS

plan = [FinetuneSpec(FinetuneConfig(task="rte", seed=1, model="{BERT}", data="hub"))]
check_offline_inputs(plan)
check_models(plan)
print("rows", len(load_task_dataset(TASKS["rte"], "hub")["validation"]))
print("model", type(load_pretrained("{BERT}").model).__name__)
try:
    check_offline_inputs([FinetuneSpec(FinetuneConfig(task="mrpc", seed=1, model="{ROBERTA}", data="hub"))])
except PlanError as error:
    print(error)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HF_DATASETS_CACHE")}
    env.update(HF_HOME=str(cache), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["rows 300", "model BertForMaskedLM"]
    assert f"the cache (HF_HOME={cache}) lacks 2 of the 2 models and data sets" in done.stdout
    assert "  model roberta-base: not in the cache" in lines
    assert "  data set nyu-mll/glue (mrpc): not in the cache (its configs there: ['rte'])" in lines
    assert f"  python -m sweeps prefetch <sweeps> --preset <preset> --cache {cache}" in lines


# --- an offline sweep stops before Ray starts ------------------------------------------------------------------------

@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    """This process's Hugging Face caches moved to an empty HF_HOME, the hubs offline (as conftest sets them)."""
    import datasets
    from huggingface_hub import constants

    home = tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert prefetch.offline_modes() == (True, True)
    return home


@pytest.fixture
def ray_never_starts(monkeypatch):
    import ray

    from orchestrator import sweep

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(sweep, "ray_session", refuse)
    yield
    assert not ray.is_initialized()


def test_an_offline_sweep_missing_inputs_stops_before_ray_naming_them_and_the_prefetch_command(
        empty_cache, ray_never_starts, tmp_path, capsys):
    code = sweeps_main(["low_data", "--preset", "paper", "--storage", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2
    assert "lacks 6 of the 6 models and data sets this sweep reads:" in err
    for item in ("model bert-base-uncased", "pre-training corpus Salesforce/wikitext (wikitext-103-raw-v1)",
                 "data set nyu-mll/glue (cola)", "data set nyu-mll/glue (mnli)", "data set nyu-mll/glue (sst2)",
                 "data set rajpurkar/squad"):
        assert f"  {item}: not in the cache\n" in err
    assert f"  python -m sweeps prefetch low_data --preset paper --cache {empty_cache}\n" in err
    assert f"HF_HOME={empty_cache} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1" in err
    assert "cannot load model" not in err  # check_models' message did not come first


def test_the_check_covers_only_unfinished_trials_and_nothing_online(empty_cache, monkeypatch):
    import datasets
    from huggingface_hub import constants

    from orchestrator import sweep

    spec = DenseLossSpec(BERT, WIKITEXT)
    with pytest.raises(PlanError, match=r"python -m sweeps prefetch --all --preset paper --cache"):
        with prefetch.invoked_as("--all", "paper"):
            sweep.prepare(Plan.of([spec]), Storage.at(str(empty_cache.parent / "runs")), None)
    monkeypatch.setattr(sweep.results, "finished_run_ids", lambda storage: {spec.run_id})
    sweep.prepare(Plan.of([spec]), Storage.at(str(empty_cache.parent / "runs")), None)  # nothing left to read
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    check_offline_inputs([spec])  # online: the trials fetch what they need


# --- fetching without a hub ---------------------------------------------------------------------------------------

def test_fetch_with_the_hubs_offline_names_each_item_it_could_not_fetch(tmp_path, capsys):
    items = [Item("model", BERT), glue("rte")]
    with pytest.raises(PrefetchError) as error:
        fetch(items, tmp_path)
    message = str(error.value)
    assert message.startswith(f"could not fetch 2 item(s) into {tmp_path}:\n  model bert-base-uncased: "
                              "OfflineModeIsEnabled")
    assert "  data set nyu-mll/glue (rte): not tried, the hub could not be reached" in message
    assert "HF_HUB_OFFLINE and HF_DATASETS_OFFLINE are set here: prefetch must run where the hubs can be reached" \
        in message
    assert missing(items, tmp_path) == items


@pytest.mark.slow
def test_prefetch_from_a_hub_that_does_not_answer_fails_naming_the_items(tmp_path):
    """A real unreachable endpoint (a closed local port), no offline mode: the library retries, then the command
    fails at the first item and names the rest without trying them (about 25 s of the library's back-off)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "sweeps", "prefetch", "low_data", "--preset", "paper", "--cache",
                           str(tmp_path / "hf")], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "error: could not fetch 6 item(s) into" in done.stderr
    assert "  model bert-base-uncased: ConnectError" in done.stderr
    assert "  data set rajpurkar/squad: not tried, the hub could not be reached" in done.stderr
    assert "Check that this machine reaches the Hugging Face hub" in done.stderr
