"""``slurm/tamt.sbatch`` on a real Slurm: munged, slurmctld and two slurmd (nodes n1 and n2, one CPU and one GPU
each) on this machine, from a configuration generated in a temporary directory.

The GPUs are stand-ins (``gres.conf`` names ``/dev/null``): Slurm allocates them and sets ``CUDA_VISIBLE_DEVICES``,
so the script's GPU counting is exercised, while torch (a CPU build) sees none and the smoke presets run on CPUs.
Both "nodes" are one machine, so the script is told to give each its own loopback address (``NODE_IP_CMD``: n1 is
127.0.0.2, n2 127.0.0.3; Ray rewrites 127.0.0.1 to the host's address) and its own Ray temp dir.

Everything the tests start carries an environment marker; the teardown cancels the jobs, stops the daemons by pid
and kills any process that still carries the marker, and nothing else. Without the Slurm and munge binaries (or
without root, which slurmd needs) the tests skip, and fail under ``CI=true``, where ``.ci/run`` installs them.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator import results
from orchestrator.storage import Storage

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "slurm" / "tamt.sbatch"
VENV = Path(sys.executable).parent.parent  # the venv running the tests: the jobs run the same code
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel", "squeue", "sinfo")
NODE_IPS = {"n1": "127.0.0.2", "n2": "127.0.0.3"}
DAEMON_TIMEOUT_S = 60.0
SMOKE_JOB_TIMEOUT_S = 60 * 60.0  # the smoke main job: 9 min on these one-CPU nodes, 40+ min seen on busy ones
SIGTERM_JOB_TIMEOUT_S = 30 * 60.0
STOP_GRACE_S = 60
RAY_STOP_ALLOWANCE_S = 45  # after the driver exits, the script stops Ray on both nodes


def _missing() -> str | None:
    """Why a local Slurm cannot run here, or None."""
    absent = [name for name in BINARIES if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]
    if absent:
        return (f"Slurm/munge binaries missing: {', '.join(absent)} (apt-get install slurm-wlm munge; "
                ".ci/run does it)")
    if os.geteuid() != 0:
        return "slurmd runs jobs as their users and needs root"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no munge user (the munge package creates it)"
    for ip in NODE_IPS.values():
        try:
            with socket.socket() as s:
                s.bind((ip, 0))
        except OSError as error:
            return f"loopback address {ip} unavailable ({error}); the two nodes need 127.0.0.2 and 127.0.0.3"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@dataclass
class SlurmCluster:
    root: Path
    env: dict[str, str]
    """For Slurm's clients and the jobs: SLURM_CONF, the marker, the test session's environment."""
    marker: str
    daemons: dict[str, subprocess.Popen]

    def run(self, *args: str, timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {done.returncode}: {done.stdout}{done.stderr}")
        return done

    def log_tails(self) -> str:
        logs = sorted((self.root / "log").glob("*.log")) + sorted((self.root / "munge").glob("*.log"))
        return "\n".join(f"--- {path.name}:\n{path.read_text(errors='replace')[-1500:]}" for path in logs)


def _config(root: Path, ports: dict[str, int]) -> str:
    host = socket.gethostname()
    nodes = "\n".join(f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={ports[name]} CPUs=1 "
                      f"RealMemory=8000 Gres=gpu:1 State=UNKNOWN" for name in NODE_IPS)
    return f"""ClusterName=tamttest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports["ctld"]}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ReturnToService=2
JobCompType=jobcomp/none
MinJobAge=3600
{nodes}
PartitionName=debug Nodes={",".join(NODE_IPS)} Default=YES MaxTime=INFINITE State=UP
"""


def _marked_processes(marker: str) -> list[int]:
    """Processes whose environment carries the marker (daemons, job steps, Ray and its workers)."""
    needle = f"TAMT_SLURM_TEST={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _teardown(cluster: SlurmCluster) -> list[int]:
    """Cancel the jobs, stop slurmd, slurmctld and munged by pid, kill what still carries the marker; returns the
    processes left after that (should be none)."""
    if cluster.daemons.get("slurmctld") is not None and cluster.daemons["slurmctld"].poll() is None:
        subprocess.run(["scancel", "--user", "root"], env=cluster.env, capture_output=True, timeout=30)
        deadline = time.time() + 90
        while time.time() < deadline:
            queue = subprocess.run(["squeue", "-h"], env=cluster.env, capture_output=True, text=True, timeout=30)
            if queue.returncode != 0 or not queue.stdout.strip():
                break
            time.sleep(1)
    for name in ("slurmd-n2", "slurmd-n1", "slurmctld", "munged"):
        if name in cluster.daemons:
            _stop(cluster.daemons[name])
    for _ in range(2):
        for pid in _marked_processes(cluster.marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(1)
    return _marked_processes(cluster.marker)


@pytest.fixture(scope="module")
def slurm_cluster():
    """munged, slurmctld and slurmd for n1 and n2, each a foreground process of this module; yields a
    :class:`SlurmCluster` once both nodes are idle. Module-scoped, so that stopping them belongs to this module's
    last test (slow, like all here) and not to whichever test the session ends with."""
    why = _missing()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"a local Slurm is required under CI=true: {why}")
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="tsl-", dir="/tmp"))  # short: Ray's socket paths live under it
    root.chmod(0o755)
    marker = root.name
    munge = root / "munge"  # socket and log: searchable by all, writable by munge; the key: munge's alone
    keys = root / "munge-key"
    for directory, mode in ((munge, 0o755), (keys, 0o700)):
        directory.mkdir()
        shutil.chown(directory, "munge", "munge")
        directory.chmod(mode)
    (keys / "munge.key").write_bytes(os.urandom(1024))
    shutil.chown(keys / "munge.key", "munge", "munge")
    (keys / "munge.key").chmod(0o400)
    for sub in ("state", "log", "spool/n1", "spool/n2"):
        (root / sub).mkdir(parents=True)
    ports = {"ctld": _free_port(), "n1": _free_port(), "n2": _free_port()}
    conf = root / "slurm.conf"
    conf.write_text(_config(root, ports))
    (root / "gres.conf").write_text("NodeName=n[1-2] Name=gpu File=/dev/null\n")  # a stand-in GPU per node

    env = {**os.environ, "SLURM_CONF": str(conf), "TAMT_SLURM_TEST": marker}
    for name in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)  # conftest's loopback-only switch would make `ray start --address` joins abort
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    cluster = SlurmCluster(root, env, marker, {})
    logs = {}
    try:
        def start(name: str, args: list[str], **options) -> None:
            logs[name] = (root / "log" / f"{name}.out").open("wb")
            cluster.daemons[name] = subprocess.Popen(args, env=env, stdout=logs[name], stderr=subprocess.STDOUT,
                                                     stdin=subprocess.DEVNULL, cwd=root, **options)

        start("munged", [_binary("munged"), "--foreground", f"--socket={munge}/socket",
                         f"--key-file={keys}/munge.key", f"--pid-file={keys}/munged.pid",
                         f"--log-file={munge}/munged.log", f"--seed-file={keys}/munged.seed"],
              user="munge", group="munge", extra_groups=[])
        deadline = time.time() + DAEMON_TIMEOUT_S
        while not (munge / "socket").exists():
            assert cluster.daemons["munged"].poll() is None and time.time() < deadline, (
                f"munged did not start:\n{cluster.log_tails()}")
            time.sleep(0.2)
        start("slurmctld", [_binary("slurmctld"), "-D", "-f", str(conf)])
        for node in NODE_IPS:
            start(f"slurmd-{node}", [_binary("slurmd"), "-D", "-f", str(conf), "-N", node])
        deadline = time.time() + DAEMON_TIMEOUT_S
        while True:
            states = cluster.run("sinfo", "-N", "-h", "-o", "%N %t", check=False).stdout.split()
            if states == ["n1", "idle", "n2", "idle"]:
                break
            dead = [name for name, proc in cluster.daemons.items() if proc.poll() is not None]
            assert not dead and time.time() < deadline, (
                f"Slurm did not come up (sinfo: {states}, exited: {dead}):\n{cluster.log_tails()}")
            time.sleep(0.5)
        yield cluster
    finally:
        left = _teardown(cluster)
        for handle in logs.values():
            handle.close()
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"processes of the test's Slurm survived its teardown: {left}"


# ---- jobs ------------------------------------------------------------------------------------------------------

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE"}


@dataclass
class Job:
    id: str
    output: Path


def _job_env(cluster: SlurmCluster, tmp_path: Path, storage: Path, **settings: str) -> dict[str, str]:
    """The script's settings for a test job: the test's venv and storage, loopback addresses and short temp dirs
    per node, a token file of the test's own, Ray's logs in the test's directory."""
    return {**cluster.env, "VENV": str(VENV), "STORAGE": str(storage),
            "NODE_IP_CMD": 'case "$SLURMD_NODENAME" in '
                           + " ".join(f"{name}) echo {ip};;" for name, ip in NODE_IPS.items()) + " esac",
            "NODE_TMP": f"{cluster.root}/{tmp_path.name[:12]}", "OBJECT_STORE_MEMORY": str(200 * 1024**2),
            "RAY_AUTH_TOKEN_PATH": str(tmp_path / "ray-token"), "LOG_DIR": str(tmp_path / "logs"),
            "START_TIMEOUT": "300", **settings}


def submit(cluster: SlurmCluster, env: dict[str, str], output: Path, command: list[str]) -> Job:
    done = subprocess.run(["sbatch", "--parsable", "--nodes=2", "--cpus-per-task=1", "--gpus-per-node=1",
                           "--time=60", f"--output={output}", f"--chdir={ROOT}", str(SCRIPT), *command],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"sbatch failed: {done.stdout}{done.stderr}"
    return Job(done.stdout.strip().split(";")[0], output)


def job_state(cluster: SlurmCluster, job: Job) -> dict[str, str]:
    shown = cluster.run("scontrol", "show", "job", "-o", job.id).stdout
    return dict(re.findall(r"(\w+)=(\S*)", shown))


def output_of(job: Job) -> str:
    return job.output.read_text(errors="replace") if job.output.exists() else "(no output file)"


def wait_for_end(cluster: SlurmCluster, job: Job, timeout_s: float) -> dict[str, str]:
    deadline = time.time() + timeout_s
    while (state := job_state(cluster, job))["JobState"] not in TERMINAL:
        if time.time() > deadline:
            cluster.run("scancel", job.id, check=False)
            pytest.fail(f"job {job.id} still {state['JobState']} after {timeout_s:.0f} s:\n{output_of(job)[-6000:]}")
        time.sleep(0.5)
    return state


def attempts(storage: Path, run_id: str) -> int:
    log = storage / "runs" / run_id / "attempts.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


# ---- test 1: the smoke main job on two nodes --------------------------------------------------------------------

def test_the_smoke_main_job_runs_through_the_sbatch_script_on_two_nodes(slurm_cluster, tmp_path):
    """``sbatch slurm/tamt.sbatch python sweeps/main_results.py --preset smoke`` on 2 nodes: the job completes, its
    driver ran on a 2-node Ray cluster (the heartbeat), with token authentication on, and every planned trial has
    exactly one row."""
    sys.path.insert(0, str(ROOT))
    from orchestrator.cli import plan_of
    from sweeps.main_results import PRESETS

    storage = tmp_path / "runs"
    env = _job_env(slurm_cluster, tmp_path, storage, STOP_GRACE=str(STOP_GRACE_S))
    started = time.time()
    job = submit(slurm_cluster, env, tmp_path / "job-%j.out",
                 ["python", "sweeps/main_results.py", "--preset", "smoke"])
    job.output = tmp_path / f"job-{job.id}.out"
    state = wait_for_end(slurm_cluster, job, SMOKE_JOB_TIMEOUT_S)
    wall = time.time() - started
    text = output_of(job)
    print(f"\nsmoke main job {job.id}: {state['JobState']} after {wall:.0f} s\n{text[-3000:]}")
    assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", (
        f"job {job.id} {state['JobState']} {state['ExitCode']}:\n{text[-8000:]}")

    # token authentication stayed on: the file the script made, readable by its owner only, and Ray used it
    token = tmp_path / "ray-token"
    assert token.is_file() and token.stat().st_mode & 0o077 == 0, oct(token.stat().st_mode)
    assert "Ray cluster up: 2 node(s)" in text
    assert "--include-dashboard=false" in text

    heartbeat = json.loads((storage / "sweeps" / "main_results.driver.json").read_text())
    assert heartbeat["ended"] == "complete", heartbeat
    assert heartbeat["cluster"] == {"nodes": 2, "cpus": 2.0, "gpus": 2.0}, heartbeat["cluster"]

    planned = plan_of(PRESETS["smoke"]()).run_ids()
    assert len(planned) == 25
    table = results.read_frame(Storage.at(str(storage)))
    assert Counter(table.run_id) == Counter(planned), "every planned trial exactly once"
    ran_on = Counter(table.node)
    print(f"trials per Ray node: {dict(ran_on)}")


# ---- test 2: SIGTERM in the middle of a TAMT search, then resubmit ----------------------------------------------

SIGTERM_STEPS = 120
SIGTERM_SWEEP = f'''"""The SIGTERM test's sweep: OMP and a {SIGTERM_STEPS}-step TAMT-MLM search at 50 %, each mask
fine-tuned once on the smoke SST-2. No mask is saved before the last step, and the periodic checkpoint comes every
300 s, so a search stopped early resumes from the checkpoint its SIGTERM made."""
import sys

sys.path.insert(0, {str(ROOT)!r})

from orchestrator.search_settings import PerSparsity
from sweeps.common import SMOKE_SEARCH, smoke_grid, sweep_main

PRESETS = {{"smoke": lambda: [smoke_grid(methods=("omp", "tamt-mlm"), sparsities=(0.5,), tasks=("sst2",),
                                         full_model=False,
                                         search=SMOKE_SEARCH.with_method("tamt-mlm", {{"steps": {SIGTERM_STEPS},
                                                                                 "save_steps": ()}}),
                                         finetune_steps=PerSparsity({{0.5: {SIGTERM_STEPS}}}))]}}

if __name__ == "__main__":
    raise SystemExit(sweep_main("slurm_sigterm", PRESETS))
'''


def _search_log(storage: Path, run_id: str) -> list[dict]:
    path = storage / "runs" / run_id / "masks" / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def checkpoint_steps(storage: Path, run_id: str) -> list[int]:
    """The steps of the search's Ray Train checkpoints in the storage (``ray/search-<run_id>/checkpoint-<step>``)."""
    return sorted(int(p.name.rsplit("-", 1)[1]) for p in (storage / "ray" / f"search-{run_id}").glob("checkpoint-*"))


def test_sigterm_mid_search_stops_within_the_grace_and_a_resubmission_resumes(slurm_cluster, tmp_path):
    """``scancel --signal=TERM --batch`` while a TAMT search runs: the job ends within the grace period; the same
    job submitted again finishes with every row once, no trial that had finished ran again, and the search went
    on from a checkpoint, not from step 0."""
    sweep = tmp_path / "sigterm_sweep.py"
    sweep.write_text(SIGTERM_SWEEP)
    sys.path.insert(0, str(tmp_path))
    import sigterm_sweep
    from orchestrator.cli import plan_of

    plan = plan_of(sigterm_sweep.PRESETS["smoke"]())
    tamt = next(run_id for run_id in plan.searches if plan.get(run_id).config.method == "tamt-mlm")
    storage = tmp_path / "runs"
    env = _job_env(slurm_cluster, tmp_path, storage, STOP_GRACE=str(STOP_GRACE_S))
    command = ["python", str(sweep), "--preset", "smoke"]

    first = submit(slurm_cluster, env, tmp_path / "first.out", command)
    deadline = time.time() + SIGTERM_JOB_TIMEOUT_S
    while True:  # mid-search: the search has logged steps, and another trial has finished
        state = job_state(slurm_cluster, first)["JobState"]
        assert state not in TERMINAL, f"job {first.id} ended ({state}) before the search ran:\n{output_of(first)}"
        assert time.time() < deadline, f"the search never started:\n{output_of(first)[-6000:]}"
        logged = _search_log(storage, tamt)
        done = results.finished_run_ids(Storage.at(str(storage))) if (storage / "table").exists() else set()
        if logged and logged[-1]["step"] >= 10 and done:
            break
        time.sleep(1)
    print(f"\nSIGTERM at search step {logged[-1]['step']} of {SIGTERM_STEPS}, {len(done)} trial(s) finished")
    signalled = time.time()
    slurm_cluster.run("scancel", "--signal=TERM", "--batch", first.id)
    state = wait_for_end(slurm_cluster, first, STOP_GRACE_S + RAY_STOP_ALLOWANCE_S + 120)
    stopped_after = time.time() - signalled
    text = output_of(first)
    print(f"job {first.id}: {state['JobState']} {state['ExitCode']} {stopped_after:.1f} s after the SIGTERM\n"
          f"{text[-2500:]}")
    finished_first = results.finished_run_ids(Storage.at(str(storage)))
    assert tamt not in finished_first, "the search finished before the SIGTERM reached it"
    assert "SIGTERM received" in text and "the driver exited with 143" in text, text[-6000:]
    assert stopped_after <= STOP_GRACE_S + RAY_STOP_ALLOWANCE_S, (
        f"the job took {stopped_after:.0f} s to stop after SIGTERM (grace {STOP_GRACE_S} s)")
    checkpoints = checkpoint_steps(storage, tamt)
    logged_first = _search_log(storage, tamt)
    print(f"search: logged up to step {logged_first[-1]['step']}, checkpoints at steps {checkpoints}")

    second = submit(slurm_cluster, env, tmp_path / "second.out", command)
    state = wait_for_end(slurm_cluster, second, SIGTERM_JOB_TIMEOUT_S)
    text = output_of(second)
    print(f"job {second.id} (resubmitted): {state['JobState']} {state['ExitCode']}\n{text[-2500:]}")
    assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", text[-8000:]

    table = results.read_frame(Storage.at(str(storage)))
    assert Counter(table.run_id) == Counter(plan.run_ids()), "every planned trial exactly once"
    for run_id in finished_first:
        assert attempts(storage, run_id) == 1, f"{run_id} finished in the first job and ran again"
    # The resubmitted search went on from a checkpoint: the first job left one past step 0, and the second job's
    # first logged step lies beyond the first job's first (a search started over would log that step again).
    resumed = _search_log(storage, tamt)[len(logged_first):]
    print(f"search: the resubmitted job logged steps {[e['step'] for e in resumed]}")
    assert checkpoints and checkpoints[-1] > 0, "the first job left no checkpoint of the search"
    assert resumed and resumed[0]["step"] > max(logged_first[0]["step"], checkpoints[-1]), (
        f"the search started over instead of resuming from step {checkpoints[-1]}: first job logged "
        f"{[e['step'] for e in logged_first]}, second {[e['step'] for e in resumed]}")
