"""Task-agnostic tuning with Optuna through Ray Tune: the study's declaration, its trials as searches, and a
driver killed mid-study that resumes without repeating a finished trial."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest

from orchestrator import results
from orchestrator.plan import PlanError
from orchestrator.storage import Storage
from orchestrator.study import TamtStudy
from orchestrator.tuning import load_study, recover
from test_orchestrator_sweep import _env, _kill_leftovers, _wait_for_rows, attempts, mlflow_runs, run_driver

DRIVER = Path(__file__).with_name("study_driver.py")


def test_study_trials_are_searches_with_the_sampled_setting():
    study = TamtStudy(name="s", model="m", method="tamt-kd", sparsity=0.7, trials=3, search={"steps": 100})
    spec = study.spec({"lr": 1e-4, "alpha": 3.0, "phi": 0.02})
    settings = spec.config.settings
    assert (spec.config.method, settings.lr, settings.alpha, settings.phi, settings.steps) == \
        ("tamt-kd", 1e-4, 3.0, 0.02, 100)
    assert study.objective == "kd_dev_loss" and spec.run_id == study.spec(study.params_of(
        {"lr": 1e-4, "alpha": 3.0, "phi": 0.02, "study": {}})).run_id
    assert TamtStudy.from_dict(json.loads(json.dumps(study.to_dict()))) == study
    mid = study.midpoint()
    assert mid["alpha"] == pytest.approx((1.5 * 10) ** 0.5)


@pytest.mark.parametrize("change, words", [
    ({"method": "imp"}, ["tunes tamt-mlm or tamt-kd"]),
    ({"trials": 0}, ["trials must be a positive integer"]),
    ({"space": {"lr": (1e-3, 1e-4)}}, ["0 < low < high"]),
    ({"space": {"alpha": (0.5, 4.0)}}, ["alpha's lower bound must exceed 1"]),
    ({"space": {"dropout": (0.1, 0.2)}}, ["samples some of"]),
    ({"search": {"lr": 1e-4}}, ["both fixed (search) and sampled (space)"]),
    ({"search": {"steps": 0}}, ["study s:", "positive"]),
    ({"dev_loss_batches": 0}, ["dev_loss_batches 0"]),
])
def test_malformed_study_is_refused(change, words):
    with pytest.raises(PlanError) as raised:
        TamtStudy(**{"name": "s", "model": "m", "method": "tamt-mlm", "sparsity": 0.7, "trials": 2, **change})
    assert all(word in str(raised.value) for word in words), str(raised.value)


def test_recover_records_finished_trials_from_the_table_and_requeues_the_rest(tmp_path):
    storage = Storage.at(tmp_path)
    storage.prepare()
    study = TamtStudy(name="r", model="m", method="tamt-mlm", sparsity=0.7, trials=3)
    ostudy = load_study(study, storage)
    finished, cut_off = ostudy.ask(study.distributions()), ostudy.ask(study.distributions())  # left RUNNING
    spec = study.spec(finished.params)
    results.write_row(storage, {"run_id": spec.run_id, "stage": "search", "mlm_dev_loss": 4.25})
    assert recover(study, ostudy, storage) == {"recorded": 1, "requeued": 1}
    states = {t.number: t.state for t in load_study(study, storage).trials}
    assert states[finished.number] == optuna.trial.TrialState.COMPLETE
    assert load_study(study, storage).trials[finished.number].value == 4.25
    assert states[cut_off.number] == optuna.trial.TrialState.FAIL
    waiting = [t for t in load_study(study, storage).trials if t.state == optuna.trial.TrialState.WAITING]
    assert [t.system_attrs["fixed_params"] for t in waiting] == [cut_off.params]  # asked again first: it resumes


@pytest.mark.slow
def test_study_killed_mid_run_resumes_without_repeating_a_finished_trial(tmp_path, tiny_bert_dir):
    storage = tmp_path / "runs"

    def driver(trials: int) -> tuple[list[str], str]:
        temp_dir = f"/tmp/tamt-ray-{uuid.uuid4().hex[:8]}"
        path = tmp_path / f"study-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps({"storage": str(storage), "model": str(tiny_bert_dir), "temp_dir": temp_dir,
                                    "trials": trials}))
        return [sys.executable, str(DRIVER), str(path)], temp_dir

    command, temp_dir = driver(2)
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        finished_before = _wait_for_rows(storage, 1, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        _kill_leftovers(temp_dir)
    executions_before = attempts(storage)

    report = run_driver(*driver(2))
    assert report["completed"] == 2

    executions = attempts(storage)
    for run_id in finished_before:  # finished before the kill: never executed again
        assert executions[run_id] == 1 == executions_before[run_id]
    ostudy = optuna.load_study(study_name="tiny", storage=f"sqlite:///{storage / 'optuna.db'}")
    complete = [t for t in ostudy.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2
    params = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(params)) == 2, "a resumed study draws new settings instead of replaying old ones"
    table = results.read_frame(str(storage)).set_index("run_id")
    assert len(table) == 2 and set(executions) == set(table.index)
    for trial in complete:  # each value is the KD dev loss of the search with that trial's setting
        run_id = next(r for r, row in table.iterrows() if json.loads(row["info"])["search_config"]["lr"] ==
                      trial.params["lr"])
        assert trial.value == pytest.approx(table.loc[run_id].kd_dev_loss)
    best = json.loads((storage / "studies" / "tiny" / "best.json").read_text())
    assert best == {"tamt-kd": ostudy.best_params}
    assert report["best_value"] == pytest.approx(min(t.value for t in complete))
    parents, children = mlflow_runs(storage)
    assert [p.data.tags["tamt.sweep"] for p in parents] == ["tiny"]
    assert len({c.data.tags["tamt.run_id"] for c in children}) == len(children) >= 2
