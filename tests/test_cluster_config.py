"""The cluster configs: cluster.yaml passes Ray's own validation and sets up what tamt needs; the KubeRay manifests
(k8s/) have the fields KubeRay requires and agree with each other, the PVCs and the Dockerfile. No cloud, no network.
"""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "cluster.yaml"
K8S = ROOT / "k8s"
GPU = "nvidia.com/gpu"
SHARED = "/mnt/shared"
SWEEP_ARGS = ["--preset", "paper", "--storage", "/mnt/shared/tamt-runs", "--mlflow-uri", "http://127.0.0.1:5000"]


def pinned(package: str) -> str:
    """The ``==`` version pyproject.toml pins for ``package`` (extras ignored)."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in dependencies:
        match = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==([\w.]+)", requirement.replace(" ", ""))
        if match:
            return match.group(2)
    raise AssertionError(f"pyproject.toml pins no {package}==")


RAY_VERSION, TORCH_VERSION = pinned("ray"), pinned("torch")


# --- cluster.yaml: Ray's own validation ---------------------------------------------------------------------------

def load_cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def ray_validate(config: dict) -> dict:
    """What ``ray up`` checks before it touches the cloud; returns the prepared config."""
    full = prepare_config(copy.deepcopy(config))
    validate_config(full)
    return full


def test_cluster_yaml_passes_ray_validation():
    full = ray_validate(load_cluster())
    assert full["head_node_type"] in full["available_node_types"]
    assert all(node["resources"].get("GPU") == 1 for name, node in full["available_node_types"].items()
               if name != full["head_node_type"]), "one GPU per worker node: a trial's GPU is the node's"


def _misspell_setup(config):
    config["setup_comands"] = config.pop("setup_commands")


def _missing_head_type(config):
    config["head_node_type"] = "nope"


def _gpu_as_string(config):
    config["available_node_types"]["gpu_spot"]["resources"]["GPU"] = "one"


def _min_over_global_max(config):
    config["available_node_types"]["gpu_ondemand"]["min_workers"] = config["max_workers"] + 1


def _priority_as_string(config):
    config["available_node_types"]["gpu_spot"]["priority"] = "high"


@pytest.mark.parametrize("break_it, error, message", [
    (_misspell_setup, jsonschema.ValidationError,
     "Additional properties are not allowed ('setup_comands' was unexpected)"),
    (_missing_head_type, ValueError, "`head_node_type` must be one of `available_node_types`."),
    (_gpu_as_string, jsonschema.ValidationError, "'one' is not of type 'integer'"),
    (_min_over_global_max, ValueError,
     "The specified global `max_workers` is smaller than the sum of `min_workers` of all the available node types."),
    (_priority_as_string, jsonschema.ValidationError, "'high' is not of type 'integer'"),
], ids=["misspelled-key", "missing-head-type", "gpu-as-string", "min-over-max", "priority-as-string"])
def test_broken_cluster_yaml_fails_ray_validation(break_it, error, message):
    config = load_cluster()
    break_it(config)
    with pytest.raises(error, match=re.escape(message)):
        ray_validate(config)


# --- cluster.yaml: what tamt needs ----------------------------------------------------------------------------------

def node_types(config: dict) -> tuple[dict, dict[str, dict]]:
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    return head, {name: spec for name, spec in types.items() if name != config["head_node_type"]}


def command_with(commands: list[str], *needles: str) -> str:
    found = [command for command in commands if all(needle in command for needle in needles)]
    assert len(found) == 1, f"expected one command with {needles}, found {len(found)}"
    return found[0]


def test_head_runs_the_driver_and_a_lean_mlflow_server():
    config = load_cluster()
    head, _ = node_types(config)
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0, "no trial may land on the head"
    assert head["max_workers"] == 0 and "InstanceMarketOptions" not in head["node_config"], "the head is on-demand"
    assert "--num-cpus=0" in command_with(config["head_start_ray_commands"], "ray start --head")

    head_commands = config["head_setup_commands"]
    unit = command_with(head_commands, "ExecStart=", "mlflow server")
    server = next(line for line in shlex.split(unit) if line.startswith("ExecStart="))
    assert "Environment=MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in shlex.split(unit)
    assert re.search(r"--workers 1(\s|$)", server)
    assert "--host 127.0.0.1" in server and "--port 5000" in server
    backend = re.search(r"--backend-store-uri (\S+)", server).group(1)
    assert backend.startswith("sqlite:////") and not backend.startswith(f"sqlite:///{SHARED}"), \
        "the sqlite store stays off the network filesystem"
    command_with(head_commands, "systemctl", "restart tamt-mlflow")
    command_with(head_commands, "curl", "http://127.0.0.1:5000/health")
    command_with(head_commands, "export RAY_ADDRESS=auto", ".bashrc")
    command_with(head_commands, "boto3")  # replacing Ray's default head_setup_commands drops its boto3 install


def test_two_gpu_node_types_spot_first():
    config = load_cluster()
    _, workers = node_types(config)
    gpu = {name: spec for name, spec in workers.items() if spec["resources"].get("GPU", 0) >= 1}
    assert len(gpu) == 2 == len(workers)
    spot = [name for name, spec in gpu.items()
            if spec["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"]
    assert len(spot) == 1, "exactly one spot GPU type"
    (ondemand,) = set(gpu) - set(spot)
    spot_spec, ondemand_spec = gpu[spot[0]], gpu[ondemand]
    assert "InstanceMarketOptions" not in ondemand_spec["node_config"]
    assert spot_spec["resources"] == ondemand_spec["resources"], "any trial must fit either type"
    assert spot_spec["priority"] > ondemand_spec.get("priority", 0), "autoscaler v2 launches spot first"
    assert spot_spec["min_workers"] == ondemand_spec["min_workers"] == 0
    assert spot_spec["max_workers"] + ondemand_spec["max_workers"] <= config["max_workers"]


def test_setup_installs_cuda_torch_then_this_checkout():
    config = load_cluster()
    (checkout,) = [remote for remote, local in config["file_mounts"].items() if local == "."]
    setup = config["setup_commands"]
    torch = command_with(setup, f"torch=={TORCH_VERSION}")
    assert "--index-url https://download.pytorch.org/whl/cu128" in torch
    project = command_with(setup, "pip install", f"-e {checkout}")
    assert f'"ray[default]=={RAY_VERSION}"' in project
    assert setup.index(torch) < setup.index(project), "the CUDA torch must be installed before the project"
    revision = command_with(setup, f"git -C {checkout} describe")
    assert setup.index(project) < setup.index(revision)
    assert ".git" not in config.get("rsync_exclude", []), "the revision needs the checkout's .git"


def test_shared_storage_mounted_on_every_node():
    full = ray_validate(load_cluster())
    for commands in (full["head_setup_commands"], full["worker_setup_commands"]):
        fstab = command_with(commands, "/etc/fstab", "nfs4")
        assert re.search(rf":/ {SHARED} nfs4 ", fstab)
        efs_region = re.search(r"fs-[\w-]+\.efs\.([a-z0-9-]+)\.amazonaws\.com:/", fstab).group(1)
        assert efs_region == full["provider"]["region"], "EFS is reachable from its own region only"
        command_with(commands, "mount", SHARED, "mountpoint")
        command_with(commands, f"{SHARED}/tamt-runs")
    networks = {(tuple(spec["node_config"]["SubnetIds"]), tuple(spec["node_config"]["SecurityGroupIds"]))
                for spec in full["available_node_types"].values()}
    assert len(networks) == 1, "every node must reach the same EFS mount targets"


# --- KubeRay manifests ----------------------------------------------------------------------------------------------

# Three checks of a RayCluster or RayJob manifest: a JSON schema of what KubeRay's CRDs (ray-project/kuberay,
# ray-operator/config/crd/bases) and the API server require of the fields used here, with tamt's own requirements;
# the Ray autoscaler's own reading of the cluster spec (how autoscaler v2 sizes the groups on KubeRay, ending in
# Ray's validate_config); and the cross-references that no schema states (mounted volumes, the shared claim).

CONTAINER = {"type": "object", "required": ["name", "image"],
             "properties": {"name": {"type": "string", "minLength": 1}, "image": {"type": "string", "minLength": 1}}}
GPU_LIMIT = {"required": ["resources"], "properties": {"resources": {"required": ["limits"], "properties": {
    "limits": {"required": [GPU], "properties": {GPU: {"type": "integer", "minimum": 1}}}}}}}


def group_schema(ray_container: dict | None = None, **fields: dict) -> dict:
    """A head or worker group: string start parameters (the CRD's type), a pod whose containers have names and
    images; ``ray_container`` constrains the first container, the one KubeRay starts Ray in."""
    containers = {"type": "array", "minItems": 1, "items": CONTAINER, "prefixItems": [ray_container or {}]}
    pod = {"type": "object", "required": ["containers"],
           "properties": {"containers": containers, "initContainers": {"type": "array", "items": CONTAINER}}}
    return {"type": "object", "required": ["rayStartParams", "template", *fields], "properties": {
        "rayStartParams": {"type": "object", "additionalProperties": {"type": "string"}},
        "template": {"type": "object", "required": ["spec"], "properties": {"spec": pod}}, **fields}}


COUNT = {"type": "integer", "minimum": 0}
CLUSTER_SPEC = {
    "type": "object", "required": ["rayVersion", "enableInTreeAutoscaling", "headGroupSpec", "workerGroupSpecs"],
    "properties": {
        "rayVersion": {"const": RAY_VERSION}, "enableInTreeAutoscaling": {"const": True},
        "headGroupSpec": group_schema(),
        "workerGroupSpecs": {"type": "array", "minItems": 1, "items": group_schema(
            GPU_LIMIT, groupName={"type": "string", "minLength": 1}, replicas=COUNT, minReplicas=COUNT,
            maxReplicas=COUNT)}}}
MANIFEST = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {"apiVersion": {"const": "ray.io/v1"}, "kind": {"enum": ["RayCluster", "RayJob"]},
                   "metadata": {"type": "object", "required": ["name"]}},
    "if": {"properties": {"kind": {"const": "RayJob"}}},
    "then": {"properties": {"spec": {
        "type": "object", "required": ["entrypoint", "shutdownAfterJobFinishes", "rayClusterSpec"],
        "properties": {"entrypoint": {"type": "string", "pattern": r"\S"},
                       "shutdownAfterJobFinishes": {"type": "boolean"}, "rayClusterSpec": CLUSTER_SPEC}}}},
    "else": {"properties": {"spec": CLUSTER_SPEC}}}


def autoscaler_view(spec: dict) -> dict:
    """The autoscaling config that Ray's autoscaler derives from a RayCluster spec on KubeRay (node types with
    their workers and resources); raises where it cannot read the spec."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    return _derive_autoscaling_config_from_ray_cr(
        {"metadata": {"name": "tamt", "namespace": "default"}, "spec": copy.deepcopy(spec)})


def manifest_problems(doc, shared_claim: str = "tamt-shared") -> list[str]:
    """Every problem of a RayCluster or RayJob manifest; empty when KubeRay would take it and tamt could run on it."""
    problems = [f"{error.json_path}: {error.message}" for error in jsonschema.Draft202012Validator(MANIFEST)
                .iter_errors(doc)]
    if problems:
        return problems
    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    try:
        autoscaler_view(spec)
    except (KeyError, TypeError, ValueError, jsonschema.ValidationError) as error:
        problems.append(f"Ray's autoscaler cannot read the cluster spec: {error}")
    names = [group["groupName"] for group in spec["workerGroupSpecs"]]
    if len(set(names)) != len(names):
        problems.append(f"workerGroupSpecs: groupName values must be unique, got {names}")
    groups = {"headGroupSpec": spec["headGroupSpec"], **{f"workerGroupSpecs[{index}]": group
                                                        for index, group in enumerate(spec["workerGroupSpecs"])}}
    for at, group in groups.items():
        if at != "headGroupSpec" and not group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]:
            problems.append(f"{at}: needs minReplicas <= replicas <= maxReplicas")  # as KubeRay's webhook
        pod = group["template"]["spec"]
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        problems += [f"{at}: container {container['name']!r} mounts volume {mount['name']!r}, which the pod does "
                     "not declare" for container in pod["containers"] + pod.get("initContainers", [])
                     for mount in container.get("volumeMounts", []) if mount["name"] not in volumes]
        shared = {m["mountPath"]: m["name"] for m in pod["containers"][0].get("volumeMounts", [])}.get(SHARED)
        claim = volumes.get(shared, {}).get("persistentVolumeClaim", {}).get("claimName")
        if claim != shared_claim:
            problems.append(f"{at}: the Ray container's {SHARED} is claim {claim!r}, not the claim {shared_claim!r}")
    return problems


def load_one(name: str) -> dict:
    (doc,) = yaml.safe_load_all((K8S / name).read_text())
    return doc


def load_claims() -> dict[str, dict]:
    docs = list(yaml.safe_load_all((K8S / "storage.yaml").read_text()))
    assert all(doc["apiVersion"] == "v1" and doc["kind"] == "PersistentVolumeClaim" for doc in docs)
    return {doc["metadata"]["name"]: doc for doc in docs}


def shared_claim_name() -> str:
    rwx = [name for name, claim in load_claims().items() if "ReadWriteMany" in claim["spec"]["accessModes"]]
    assert len(rwx) == 1, "storage.yaml needs one ReadWriteMany claim for the shared storage"
    return rwx[0]


def cluster_specs() -> dict[str, dict]:
    return {"raycluster.yaml": load_one("raycluster.yaml")["spec"],
            "rayjob.yaml": load_one("rayjob.yaml")["spec"]["rayClusterSpec"]}


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml", "storage.yaml"])
def test_manifests_parse(name):
    docs = list(yaml.safe_load_all((K8S / name).read_text()))
    assert docs and all(isinstance(doc, dict) and doc.get("kind") for doc in docs)


@pytest.mark.parametrize("name, kind", [("raycluster.yaml", "RayCluster"), ("rayjob.yaml", "RayJob")])
def test_kuberay_manifest_has_the_required_fields(name, kind):
    doc = load_one(name)
    assert doc["kind"] == kind
    assert manifest_problems(doc, shared_claim_name()) == []
    types = autoscaler_view(doc["spec"]["rayClusterSpec"] if kind == "RayJob" else doc["spec"])["available_node_types"]
    assert types.pop("headgroup")["resources"]["CPU"] == 0, "Ray's autoscaler must see no CPU on the head"
    assert {name: node["resources"].get("GPU") for name, node in types.items()} == {"gpu-spot": 1, "gpu-ondemand": 1}


def test_every_claim_the_pods_mount_is_declared():
    claims = load_claims()
    shared = shared_claim_name()
    assert claims[shared]["spec"]["accessModes"] == ["ReadWriteMany"]
    for spec in cluster_specs().values():
        pods = [spec["headGroupSpec"]["template"]] + [group["template"] for group in spec["workerGroupSpecs"]]
        used = {volume["persistentVolumeClaim"]["claimName"] for pod in pods for volume in pod["spec"]["volumes"]
                if "persistentVolumeClaim" in volume}
        assert used <= set(claims), f"claims not in storage.yaml: {used - set(claims)}"
        assert shared in used


def test_rayjob_runs_the_paper_sweep_on_the_raycluster_spec():
    job = load_one("rayjob.yaml")["spec"]
    assert job["rayClusterSpec"] == load_one("raycluster.yaml")["spec"], "rayjob.yaml and raycluster.yaml differ"
    assert job["shutdownAfterJobFinishes"] is True
    entrypoint = job["entrypoint"]
    # KubeRay pastes the entrypoint into the submitter's shell line: an operator would run in the submitter pod.
    assert not re.search(r"&&|\|\||[;|<>`]|\$\(", entrypoint)
    program, script, *args = shlex.split(entrypoint)
    assert program == "python" and args == SWEEP_ARGS
    workdir = re.search(r"^WORKDIR (\S+)$", (K8S / "Dockerfile").read_text(), re.M).group(1)
    assert script == f"{workdir}/sweeps/main_results.py" and (ROOT / "sweeps" / "main_results.py").is_file()


def test_head_pod_runs_a_lean_mlflow_sidecar():
    claims = load_claims()
    head = load_one("raycluster.yaml")["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "no trial may land on the head"
    pod = head["template"]["spec"]
    (mlflow,) = [container for container in pod["containers"] if container["name"] == "mlflow"]
    assert pod["containers"][0]["name"] != "mlflow", "KubeRay starts Ray in the first container"
    command = " ".join(mlflow.get("command", []) + mlflow.get("args", []))
    assert "mlflow server" in command and re.search(r"--workers 1(\s|$)", command)
    assert "--host 127.0.0.1" in command and "--port 5000" in command
    assert {"name": "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "value": "false"} in mlflow["env"]
    store = re.search(r"--backend-store-uri sqlite:///(/\S+)/[^/\s]+\.db", command).group(1)
    (mount,) = [mount for mount in mlflow["volumeMounts"] if mount["mountPath"] == store]
    (volume,) = [volume for volume in pod["volumes"] if volume["name"] == mount["name"]]
    assert claims[volume["persistentVolumeClaim"]["claimName"]]["spec"]["accessModes"] == ["ReadWriteOnce"], \
        "the sqlite store stays off the shared network filesystem"


def test_spot_group_first_on_demand_after():
    groups = load_one("raycluster.yaml")["spec"]["workerGroupSpecs"]
    capacity = [set((group["template"]["spec"].get("nodeSelector") or {}).values()) for group in groups]
    assert len(groups) == 2
    assert "spot" in capacity[0], "autoscaler v2 scales the first of equally fitting groups: spot"
    assert "on-demand" in capacity[1]
    first, second = (group["template"]["spec"]["containers"][0]["resources"] for group in groups)
    assert first == second, "any trial must fit either group"


def test_dockerfile_builds_the_pinned_stack():
    dockerfile = (K8S / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(RAY_VERSION)}-py311-gpu$", dockerfile, re.M)
    torch = dockerfile.index(f"torch=={TORCH_VERSION} --index-url https://download.pytorch.org/whl/cu128")
    assert torch < dockerfile.index("pip install --no-cache-dir -e .")
    images = {container["image"] for spec in cluster_specs().values()
              for pod in [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
              for container in pod["spec"]["containers"]}
    assert len(images) == 1, f"one image everywhere, got {images}"


def _drop_group_name(doc):
    del doc["spec"]["workerGroupSpecs"][0]["groupName"]


def _mount_undeclared_volume(doc):
    doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"].append(
        {"name": "scratch", "mountPath": "/scratch"})


def _min_over_max(doc):
    doc["spec"]["workerGroupSpecs"][1]["minReplicas"] = 5
    doc["spec"]["workerGroupSpecs"][1]["maxReplicas"] = 4


def _replicas_as_string(doc):
    doc["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "12"


def _numeric_start_param(doc):
    doc["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0


def _no_gpu(doc):
    del doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"][GPU]


def _same_group_name(doc):
    doc["spec"]["workerGroupSpecs"][1]["groupName"] = doc["spec"]["workerGroupSpecs"][0]["groupName"]


def _no_cpu(doc):
    resources = doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]
    del resources["requests"]["cpu"], resources["limits"]["cpu"]


def _other_claim(doc):
    doc["spec"]["workerGroupSpecs"][1]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "x"


def _no_image(doc):
    del doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][1]["image"]


def _old_ray(doc):
    doc["spec"]["rayVersion"] = "2.9.0"


def _old_api(doc):
    doc["apiVersion"] = "ray.io/v1alpha1"


@pytest.mark.parametrize("break_it, expected", [
    (_drop_group_name, "$.spec.workerGroupSpecs[0]: 'groupName' is a required property"),
    (_mount_undeclared_volume, "headGroupSpec: container 'ray-head' mounts volume 'scratch', which the pod does not "
                               "declare"),
    (_same_group_name, "workerGroupSpecs: groupName values must be unique, got ['gpu-spot', 'gpu-spot']"),
    (_min_over_max, "workerGroupSpecs[1]: needs minReplicas <= replicas <= maxReplicas"),
    (_replicas_as_string, "$.spec.workerGroupSpecs[0].maxReplicas: '12' is not of type 'integer'"),
    (_numeric_start_param, "$.spec.headGroupSpec.rayStartParams['num-cpus']: 0 is not of type 'string'"),
    (_no_gpu, f"$.spec.workerGroupSpecs[0].template.spec.containers[0].resources.limits: '{GPU}' is a required "
              "property"),
    (_no_cpu, "Ray's autoscaler cannot read the cluster spec: Autoscaler failed to detect `CPU` resources for group "
              "gpu-spot"),
    (_other_claim, "workerGroupSpecs[1]: the Ray container's /mnt/shared is claim 'x', not the claim 'tamt-shared'"),
    (_no_image, "$.spec.headGroupSpec.template.spec.containers[1]: 'image' is a required property"),
    (_old_ray, f"$.spec.rayVersion: '{RAY_VERSION}' was expected"),
    (_old_api, "$.apiVersion: 'ray.io/v1' was expected"),
])
def test_broken_raycluster_is_reported(break_it, expected):
    doc = load_one("raycluster.yaml")
    break_it(doc)
    problems = manifest_problems(doc, shared_claim_name())
    assert len(problems) == 1 and problems[0].startswith(expected), problems


@pytest.mark.parametrize("key, expected", [
    ("entrypoint", "$.spec: 'entrypoint' is a required property"),
    ("shutdownAfterJobFinishes", "$.spec: 'shutdownAfterJobFinishes' is a required property"),
    ("rayClusterSpec", "$.spec: 'rayClusterSpec' is a required property"),
])
def test_broken_rayjob_is_reported(key, expected):
    doc = load_one("rayjob.yaml")
    del doc["spec"][key]
    problems = manifest_problems(doc, shared_claim_name())
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_cluster_guide_runs_what_the_configs_set_up():
    guide = (ROOT / "docs" / "cluster.md").read_text()
    assert f"python sweeps/main_results.py {' '.join(SWEEP_ARGS)}" in guide
    for step in ("ray up cluster.yaml", "ray attach cluster.yaml -p 5000", "curl http://127.0.0.1:5000/health",
                 "ray down cluster.yaml", "kubectl apply -f k8s/storage.yaml", "kubectl apply -f k8s/rayjob.yaml"):
        assert step in guide, step
