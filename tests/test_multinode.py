"""A sweep on a real multi-node Ray cluster: separate ``ray start`` processes on loopback aliases.

The head (127.0.0.2) has no CPUs, so no trial may run there; two one-CPU worker nodes (127.0.0.3 and 127.0.0.4,
or both on 127.0.0.3 where 127.0.0.4 is not available) run them. A driver subprocess attaches with the head's
address, as a user's sweep does on a real cluster.

The cluster is ours alone: its own port, its own short temp dirs, its own token (``RAY_AUTH_TOKEN``, so
``~/.ray/auth_token`` is neither read nor written). It is never stopped with ``ray stop`` (that would stop every Ray
of the user, other tests' too): each node is a ``ray start --block`` in a session of its own, stopped by SIGTERM
(workers first, then the head), SIGKILL after a timeout, and the teardown fails if any process of the cluster
survives.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator import results

TESTS = Path(__file__).parent
ROOT = TESTS.parent
DRIVER = TESTS / "multinode_driver.py"
RAY = Path(sys.executable).with_name("ray")
HEAD_IP, WORKER_IPS = "127.0.0.2", ("127.0.0.3", "127.0.0.4")
MIB = 1024**2
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
SWEEP_TIMEOUT_S = 150.0


@dataclass
class Node:
    role: str  # "head", "w1", "w2"
    ip: str
    temp_dir: str
    log: Path
    proc: subprocess.Popen | None = None
    node_id: str | None = None


@dataclass
class LoopbackCluster:
    address: str
    env: dict[str, str]
    temp_root: str
    nodes: dict[str, Node] = field(default_factory=dict)

    @property
    def workers(self) -> list[Node]:
        return [node for role, node in self.nodes.items() if role != "head"]


def _bindable(ip: str) -> str | None:
    """None if a socket binds to ``ip``, else why not."""
    try:
        with socket.socket() as s:
            s.bind((ip, 0))
    except OSError as error:
        return f"{type(error).__name__}: {error}"
    return None


def _free_port() -> int:
    with socket.socket() as s:  # the GCS listens on every interface, so the port must be free on all of them
        s.bind(("", 0))
        return s.getsockname()[1]


def _env(token: str) -> dict[str, str]:
    """The test's environment (offline Hugging Face, caches) for the nodes and drivers, fit for a multi-node Ray."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    # conftest sets it for single-node Ray in this process; it makes `ray start --address` joins abort
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    return env


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _start(node: Node, args: list[str], env: dict[str, str]) -> None:
    with node.log.open("wb") as log:
        node.proc = subprocess.Popen(
            [str(RAY), "start", "--block", f"--node-ip-address={node.ip}", f"--temp-dir={node.temp_dir}",
             "--disable-usage-stats", *args],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def _wait_started(nodes: list[Node]) -> str | None:
    """None once every ``ray start --block`` says it has started, else why it has not."""
    deadline = time.time() + START_TIMEOUT_S
    waiting = list(nodes)
    while waiting and time.time() < deadline:
        for node in list(waiting):
            if "Ray runtime started" in _tail(node.log, 100_000):
                waiting.remove(node)
            elif node.proc.poll() is not None:
                return f"`ray start` of {node.role} exited with {node.proc.returncode}:\n{_tail(node.log)}"
        time.sleep(0.1)
    if waiting:
        return "\n".join(f"`ray start` of {n.role} not up after {START_TIMEOUT_S:.0f}s:\n{_tail(n.log)}"
                         for n in waiting)
    return None


def _list_nodes(cluster: LoopbackCluster, count: int) -> tuple[list[dict] | None, str]:
    """The alive nodes once ``count`` of them are, from a driver subprocess (``ray.nodes()``)."""
    done = subprocess.run([sys.executable, str(DRIVER), "nodes", cluster.address, str(count), "30"],
                          env=cluster.env, capture_output=True, text=True, timeout=90)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return None, f"exit {done.returncode}\nstdout: {done.stdout[-1500:]}\nstderr: {done.stderr[-3000:]}"
    return json.loads(lines[-1]), ""


def _proc_info(pid: int) -> tuple[str, int, bytes] | None:
    """(state, session id, command line) of a process, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp session ...
    return fields[0], int(fields[3]), cmdline


def cluster_processes(cluster: LoopbackCluster) -> list[int]:
    """Live processes of the cluster: in a node's session (agents and workers rename themselves ``ray::...``, so
    their command lines do not name the temp dir) or naming its temp dir in their command line."""
    sessions = {node.proc.pid for node in cluster.nodes.values() if node.proc is not None}
    marker = cluster.temp_root.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        info = _proc_info(int(entry.name))
        if info is not None and info[0] != "Z" and (info[1] in sessions or marker in info[2]):
            found.append(int(entry.name))
    return found


def _terminate(node: Node) -> None:
    """SIGTERM to the node's ``ray start --block``: it drains the node and stops its processes. Only to it, not to
    its process group: the head's GCS would go at once and the head's drain then waits 30 s for it."""
    if node.proc is not None and node.proc.poll() is None:
        node.proc.send_signal(signal.SIGTERM)


def _wait_or_kill(node: Node) -> None:
    """Wait for a terminated node; SIGKILL its process group (its session) after a timeout."""
    if node.proc is None:
        return
    try:
        node.proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(node.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            node.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass  # the sweep over the cluster's processes in _teardown reports it


def _teardown(cluster: LoopbackCluster) -> list[int]:
    """Stop the cluster, workers first; returns the processes still alive after a SIGKILL sweep (should be none)."""
    for worker in cluster.workers:
        _terminate(worker)
    for worker in cluster.workers:
        _wait_or_kill(worker)
    _terminate(cluster.nodes["head"])
    _wait_or_kill(cluster.nodes["head"])
    deadline = time.time() + 10
    while (left := cluster_processes(cluster)) and time.time() < deadline:
        time.sleep(0.2)
    for pid in left:  # anything that escaped its node's shutdown
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.time() + 10
    while (left := cluster_processes(cluster)) and time.time() < deadline:
        time.sleep(0.2)
    return left


def _unavailable(why: str) -> None:
    """The cluster did not come up: a failure under CI (``CI=true``), where it must, and a skip elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: the multi-node cluster must come up: {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="module")
def loopback_cluster():
    """A head without CPUs on 127.0.0.2 and two one-CPU worker nodes, each a ``ray start`` process; yields a
    :class:`LoopbackCluster` whose nodes carry their Ray node ids."""
    for ip in (HEAD_IP, WORKER_IPS[0]):
        if (why := _bindable(ip)) is not None:
            _unavailable(f"loopback alias {ip} unavailable ({why}); a multi-node Ray on one machine needs "
                        "127.0.0.2 and 127.0.0.3 (127.0.0.1 is rewritten to the host's address)")
    if not RAY.exists():
        _unavailable(f"no `ray` executable next to {sys.executable}")
    second_ip = WORKER_IPS[1] if _bindable(WORKER_IPS[1]) is None else WORKER_IPS[0]

    temp_root = f"/tmp/tmn-{uuid.uuid4().hex[:8]}"  # short: Ray's socket paths have a length limit
    Path(temp_root).mkdir()
    port = _free_port()
    cluster = LoopbackCluster(address=f"{HEAD_IP}:{port}", env=_env(secrets.token_hex(32)), temp_root=temp_root)
    for role, ip in (("head", HEAD_IP), ("w1", WORKER_IPS[0]), ("w2", second_ip)):
        cluster.nodes[role] = Node(role, ip, f"{temp_root}/{role}", Path(temp_root) / f"{role}.log")
    try:
        head = cluster.nodes["head"]
        _start(head, ["--head", f"--port={port}", "--num-cpus=0", "--num-gpus=0", "--include-dashboard=false",
                      f"--object-store-memory={100 * MIB}", f"--memory={1024 * MIB}"], cluster.env)
        if (why := _wait_started([head])) is not None:
            _unavailable(f"`ray start --head` could not bring the head up: {why}")
        for worker in cluster.workers:
            _start(worker, [f"--address={cluster.address}", "--num-cpus=1", "--num-gpus=0",
                            f"--object-store-memory={100 * MIB}", f"--memory={2048 * MIB}"], cluster.env)
        if (why := _wait_started(cluster.workers)) is not None:
            _unavailable(f"`ray start --address` could not bring the worker nodes up: {why}")
        listed, why = _list_nodes(cluster, 3)
        if listed is None:
            _unavailable(f"the 3 nodes did not all join the cluster: {why}")
        for node in cluster.nodes.values():  # a node's object store socket lives under its own temp dir
            found = [n for n in listed if n["store"].startswith(node.temp_dir + "/")]
            assert len(found) == 1 and found[0]["ip"] == node.ip, (node.role, node.ip, listed)
            node.node_id = found[0]["node_id"]
        assert {n["node_id"]: n["cpu"] for n in listed} == {
            cluster.nodes["head"].node_id: 0.0, cluster.nodes["w1"].node_id: 1.0, cluster.nodes["w2"].node_id: 1.0}
        yield cluster
    finally:
        left = _teardown(cluster)
        shutil.rmtree(temp_root, ignore_errors=True)
        assert not left, f"processes of the multi-node cluster survived its teardown: {left}"


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_a_cluster_that_does_not_come_up_fails_under_ci_and_is_skipped_elsewhere(monkeypatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="the head did not start"):
        _unavailable("the head did not start")


def _plan(model: Path, seeds: tuple[int, ...]):
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import multinode_driver

    return multinode_driver.grid({"model": str(model), "seeds": list(seeds)}).plan()


@pytest.mark.slow
def test_sweep_attached_to_a_multi_node_cluster_runs_on_both_workers_only(loopback_cluster, tmp_path, tiny_bert_dir):
    cluster = loopback_cluster
    storage = tmp_path / "runs"
    settings = tmp_path / "driver.json"
    settings.write_text(json.dumps({"address": cluster.address, "storage": str(storage),
                                    "model": str(tiny_bert_dir), "seeds": [1, 2]}))
    driver = subprocess.Popen([sys.executable, str(DRIVER), "sweep", str(settings)], env=cluster.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = driver.communicate(timeout=SWEEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        stdout, stderr = driver.communicate()
        pytest.fail(f"sweep driver still running after {SWEEP_TIMEOUT_S:.0f}s:\n{stdout[-2000:]}\n{stderr[-4000:]}")
    assert driver.returncode == 0, f"sweep driver failed:\n{stdout[-2000:]}\n{stderr[-4000:]}"
    report = json.loads(stdout.strip().splitlines()[-1])

    plan = _plan(tiny_bert_dir, (1, 2))
    planned = set(plan.searches) | set(plan.finetunes)
    assert len(plan.searches) == 2 and len(plan.finetunes) == 6
    assert report["complete"], report
    assert report["planned"] == len(planned) and report["skipped"] == 0 and set(report["succeeded"]) == planned

    table = results.read_frame(str(storage))
    assert Counter(table.run_id) == Counter(planned), "each planned run id exactly once"

    head, w1, w2 = (cluster.nodes[role].node_id for role in ("head", "w1", "w2"))
    ran_on = Counter(table.node)
    assert set(ran_on) <= {w1, w2}, f"trials ran outside the worker nodes (head {head}): {ran_on}"
    assert head not in ran_on
    assert ran_on[w1] > 0 and ran_on[w2] > 0, f"trials did not run on both workers: {ran_on}"

    for run_id in planned:
        attempts_log = storage / "runs" / run_id / "attempts.jsonl"
        assert attempts_log.is_file(), f"no attempts.jsonl for {run_id}"
        attempts = [json.loads(line) for line in attempts_log.read_text().splitlines()]
        assert attempts and {a["node"] for a in attempts} <= {w1, w2}, (run_id, attempts)
    print("\nmulti-node sweep: " + ", ".join(f"{n.role} {n.node_id}@{n.ip}: {ran_on[n.node_id]} trials"
                                            for n in cluster.nodes.values()))
