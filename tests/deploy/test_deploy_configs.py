"""The deployment kit checked without a cluster, an Envoy or a balancer running:

- ``deploy/k8s/``: every built-in resource validated against the Kubernetes OpenAPI schemas
  (``kubernetes-validate``, strict: unknown fields fail); the custom resources (LeaderWorkerSet,
  InferencePool, Gateway, HTTPRoute) checked for the fields their CRDs require; and the
  numbers that must agree across files (drain timings, probes, ports, labels, flags) agree;
- ``deploy/envoy/envoy.yaml``: parsed into Envoy's own protobuf types (``Bootstrap``, every
  ``typed_config`` included: a misspelt field or enum fails), then its key settings checked;
- ``deploy/haproxy/haproxy.cfg``: ``haproxy -c`` (when installed) and its key settings.

The nanovl flags in the manifests are parsed with ``nanovl serve``'s own parsers, vLLM's
engine flags included, so a renamed or misspelt flag fails here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.settings import ServerSettings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
ENVOY = REPO / "deploy" / "envoy" / "envoy.yaml"
HAPROXY_CFG = REPO / "deploy" / "haproxy" / "haproxy.cfg"
# Envoy's API as Python modules, installed apart from .venv by `make setup` (see the Makefile).
ENVOY_PROTOS = REPO / ".cache" / "xds-protos-1.85.0"
KUBERNETES_VERSION = "1.33.0"
ENGINE_SHUTDOWN_MARGIN_S = 15  # the engine's own shutdown after the drain (seconds on a GPU host)
BUILT_IN = {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "HorizontalPodAutoscaler", "Secret"}


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _all_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, d) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml" for d in _docs(p.name)]


def _one(name: str, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _docs(name) if d["kind"] == kind]
    return doc


def _flag(args: list[str], name: str) -> str:
    """The value of ``--name=value`` or ``--name value`` in a command line."""
    for i, a in enumerate(args):
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
        if a == f"--{name}":
            return args[i + 1]
    raise AssertionError(f"--{name} is not in {args}")


def _serve_args(container: dict[str, Any]):
    """A container's `nanovl serve` command line, parsed by nanovl's and vLLM's parsers."""
    from nanovl.cli.serve import build_engine_parser, build_parser

    assert container["command"] == ["nanovl", "serve"]
    args, rest = build_parser().parse_known_args(container["args"])
    engine = build_engine_parser().parse_args(rest)  # vLLM's: unknown engine flags fail here
    return args, engine, rest


# ------------------------------------------------------------------------------ Kubernetes


@pytest.mark.parametrize(("name", "doc"), [pytest.param(n, d, id=f"{n}:{d['kind']}") for n, d in _all_docs()])
def test_every_resource_is_valid(name: str, doc: dict[str, Any]) -> None:
    if doc["kind"] in BUILT_IN:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        return
    # Custom resources: no schema ships with kubernetes-validate; the fields their CRDs require.
    required = {
        ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): ("spec.leaderWorkerTemplate.workerTemplate",),
        ("inference.networking.k8s.io/v1", "InferencePool"): (
            "spec.selector.matchLabels",
            "spec.targetPorts",
            "spec.endpointPickerRef.name",
        ),
        ("gateway.networking.k8s.io/v1", "Gateway"): ("spec.gatewayClassName", "spec.listeners"),
        ("gateway.networking.k8s.io/v1", "HTTPRoute"): ("spec.parentRefs", "spec.rules"),
    }[(doc["apiVersion"], doc["kind"])]
    for path in required:
        node: Any = doc
        for key in path.split("."):
            assert isinstance(node, dict) and key in node, f"{name}: {doc['kind']} has no {path}"
            node = node[key]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    # Pod templates inside custom resources are Kubernetes pod specs: validate them as such.
    if doc["kind"] == "LeaderWorkerSet":
        for role in ("leaderTemplate", "workerTemplate"):
            template = doc["spec"]["leaderWorkerTemplate"][role]
            kubernetes_validate.validate(
                {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role.lower()}, "template": template},
                KUBERNETES_VERSION,
                strict=True,
            )


def test_kustomization_lists_files_that_exist() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource


def test_the_deployment_drains_within_its_grace_period_and_probes_nanovls_health() -> None:
    pod = _one("deployment.yaml", "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args, engine, _ = _serve_args(container)
    # preStop: SIGUSR1 (readiness NOT_SERVING, still serving), then wait the readiness grace.
    hook = container["lifecycle"]["preStop"]["exec"]["command"]
    assert hook[:2] == ["/bin/sh", "-c"] and "kill -USR1 1" in hook[2]
    (sleep_s,) = (int(x) for x in re.findall(r"sleep (\d+)", hook[2]))
    assert sleep_s >= args.drain_readiness_grace_s
    needed = max(sleep_s, args.drain_readiness_grace_s) + args.drain_grace_s + ENGINE_SHUTDOWN_MARGIN_S
    assert pod["terminationGracePeriodSeconds"] >= needed
    # The readiness probe must notice the withdrawal well within the readiness grace.
    readiness = container["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < args.drain_readiness_grace_s
    # gRPC probes on the plaintext health port: readiness is the Inference service, liveness "".
    assert readiness["grpc"] == {"port": args.health_port, "service": "nanovl.v1.Inference"}
    assert container["startupProbe"]["grpc"] == readiness["grpc"]
    assert container["livenessProbe"]["grpc"] == {"port": args.health_port, "service": ""}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": args.port, "health": args.health_port, "metrics": args.metrics_port}
    # The operator surface stays on the pod's loopback; tokens come from the mounted Secret.
    assert args.admin_host == "127.0.0.1" and args.admin_port not in ports.values()
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert args.inference_token_file.startswith(mounts["tokens"] + "/")
    assert {v["name"]: v.get("secret", {}).get("secretName") for v in pod["volumes"]}["tokens"] == "nanovl-tokens"
    assert engine.served_model_name and engine.served_model_name[0] != engine.model
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"


def test_services_policies_and_budgets_select_the_deployments_pods() -> None:
    deployment = _one("deployment.yaml", "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    services = _docs("service.yaml")
    assert {s["metadata"]["name"] for s in services} == {"nanovl", "nanovl-replicas"}
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        (port,) = service["spec"]["ports"]
        assert port["appProtocol"] == "kubernetes.io/h2c" and port["targetPort"] == "grpc"
    assert _one("pdb.yaml", "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    policy = _one("networkpolicy.yaml", "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args, _, _ = _serve_args(container)
    opened = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert opened == {args.port, args.health_port, args.metrics_port}  # never the admin port
    hpa = _one("hpa.yaml", "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "nanovl_requests_admitted"  # profiling/telemetry/metrics.py
    pool = _one("inferencepool.yaml", "InferencePool")
    assert pool["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pool["spec"]["targetPorts"] == [{"number": args.port}]
    assert pool["spec"]["appProtocol"] == "kubernetes.io/h2c"
    route = _one("inferencepool.yaml", "HTTPRoute")
    assert route["spec"]["rules"][0]["backendRefs"][0]["kind"] == "InferencePool"
    gateway = _one("inferencepool.yaml", "Gateway")
    assert gateway["spec"]["listeners"][0]["tls"]["certificateRefs"][0]["name"] == "nanovl-gateway-tls"
    secrets = {s["metadata"]["name"]: s for s in _docs("secrets.example.yaml")}
    assert secrets["nanovl-gateway-tls"]["type"] == "kubernetes.io/tls"
    assert set(secrets["nanovl-tokens"]["stringData"]) == {"inference", "admin"}


def _engine_flags(args: list[str]) -> dict[str, str]:
    """``--flag value`` / ``--flag=value`` / ``--switch`` → {flag: value}."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        a = args[i]
        assert a.startswith("--"), (a, args)
        if "=" in a:
            k, v = a[2:].split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            k, v = a[2:], args[i + 1]
            i += 1
        else:
            k, v = a[2:], ""
        out[k] = v
        i += 1
    return out


def test_leader_and_worker_ranks_run_the_same_engine() -> None:
    lws = _one("lws.yaml", "LeaderWorkerSet")
    template = lws["spec"]["leaderWorkerTemplate"]
    (leader,) = template["leaderTemplate"]["spec"]["containers"]
    (worker,) = template["workerTemplate"]["spec"]["containers"]
    args, engine, rest = _serve_args(leader)
    assert worker["command"] == ["/bin/sh", "-c"]
    words = shlex.split(worker["args"][0])
    assert words[:3] == ["exec", "vllm", "serve"] and words[4] == "--headless"
    worker_flags = _engine_flags(words[5:])
    leader_flags = _engine_flags(rest)
    model = leader_flags.pop("model")
    assert words[3] == model
    # Every rank: the same engine flags; the worker's ranks start after the leader's.
    local = int(leader_flags["data-parallel-size-local"])
    assert worker_flags.pop("data-parallel-start-rank") == f"$$((LWS_WORKER_INDEX*{local}))"
    leader_flags.pop("served-model-name")  # the API server's, not an engine rank's
    assert worker_flags == leader_flags
    assert leader_flags["data-parallel-address"] == "$(LWS_LEADER_ADDRESS)"
    size = int(leader_flags["data-parallel-size"])
    assert size == local * template["size"]
    gpus = [int(c["resources"]["limits"]["nvidia.com/gpu"]) for c in (leader, worker)]
    assert gpus == [local, local]
    assert engine.data_parallel_size == size and engine.worker_extension_cls.endswith("NanovlWorkerExtension")
    assert json.loads(leader_flags["limit-mm-per-prompt"]) == json.loads(worker_flags["limit-mm-per-prompt"])
    # The leader drains like a Deployment pod.
    hook = leader["lifecycle"]["preStop"]["exec"]["command"][2]
    assert "kill -USR1 1" in hook
    assert template["leaderTemplate"]["spec"]["terminationGracePeriodSeconds"] >= (
        args.drain_readiness_grace_s + args.drain_grace_s + ENGINE_SHUTDOWN_MARGIN_S
    )


# ------------------------------------------------------------------------------ Envoy

_PARSE_ENVOY = """
import importlib, json, pkgutil, sys
import yaml
from google.protobuf import json_format

def type_names(node):
    if isinstance(node, dict):
        if "@type" in node:
            yield node["@type"].rsplit("/", 1)[1]
        for v in node.values():
            yield from type_names(v)
    elif isinstance(node, list):
        for v in node:
            yield from type_names(v)

config = yaml.safe_load(open(sys.argv[1]))
for name in set(type_names(config)):
    package = importlib.import_module(name.rsplit(".", 1)[0])  # register every message of its package
    for module in pkgutil.iter_modules(package.__path__):
        if module.name.endswith("_pb2"):
            importlib.import_module(f"{package.__name__}.{module.name}")
from envoy.config.bootstrap.v3 import bootstrap_pb2
bootstrap = json_format.ParseDict(config, bootstrap_pb2.Bootstrap())
print(json_format.MessageToJson(bootstrap, preserving_proto_field_name=True))
"""


@pytest.fixture(scope="module")
def envoy() -> dict[str, Any]:
    """deploy/envoy/envoy.yaml, parsed into Envoy's Bootstrap and back (defaults made explicit
    where JSON shows them; every field and enum name checked against Envoy's API)."""
    if not (ENVOY_PROTOS / "envoy").is_dir():
        pytest.skip(f"Envoy's API modules are not in {ENVOY_PROTOS}: `make setup` installs them")
    # Its own process: the xds-protos modules must not mix with this environment's own
    # opentelemetry-proto and googleapis-common-protos.
    done = subprocess.run(
        [sys.executable, "-c", _PARSE_ENVOY, str(ENVOY)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ENVOY_PROTOS)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    return float(duration[:-1])


def test_envoy_balances_per_call_by_least_request_on_grpc_readiness(envoy: dict[str, Any]) -> None:
    (cluster,) = envoy["static_resources"]["clusters"]
    assert cluster["lb_policy"] == "LEAST_REQUEST"
    assert (
        "http2_protocol_options"
        in (
            cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"][
                "explicit_http_config"
            ]
        )
    )
    (check,) = cluster["health_checks"]
    assert check["grpc_health_check"]["service_name"] == "nanovl.v1.Inference"
    # A draining replica is out of rotation before it refuses calls (--drain-readiness-grace-s).
    detection = _seconds(check["interval"]) * check["unhealthy_threshold"] + _seconds(check["timeout"])
    assert detection < ServerSettings().drain_readiness_grace_s
    assert cluster["common_lb_config"]["healthy_panic_threshold"].get("value", 0) == 0
    assert cluster["transport_socket"]["typed_config"]["common_tls_context"]["alpn_protocols"] == ["h2"]


def test_envoy_retries_only_calls_that_never_started_and_lets_streams_live(envoy: dict[str, Any]) -> None:
    (listener,) = envoy["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    manager = hcm["typed_config"]
    # Idle long enough for a paused upload (nanovl cuts it first) and a long queue or prefill.
    assert _seconds(manager["stream_idle_timeout"]) > ServerSettings().upload_idle_timeout_s
    assert _seconds(manager["request_timeout"]) == 0
    (route,) = manager["route_config"]["virtual_hosts"][0]["routes"]
    assert _seconds(route["route"]["timeout"]) == 0
    policy = route["route"]["retry_policy"]
    # UNAVAILABLE is retried: nanovl answers it before any work (draining, engine dead); never
    # reset/5xx/internal, which can come after a generation started.
    assert set(policy["retry_on"].split(",")) == {"connect-failure", "refused-stream", "unavailable"}
    assert policy["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"


# ------------------------------------------------------------------------------ HAProxy


def _haproxy() -> str | None:
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if os.access(p, os.X_OK)), None)


def test_haproxy_config_is_valid_and_checks_readiness_fast_enough() -> None:
    text = HAPROXY_CFG.read_text()
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    assert "option httpchk GET /ready" in lines and "balance leastconn" in lines
    (retry_on,) = [line.split()[1:] for line in lines if line.startswith("retry-on")]
    assert set(retry_on) == {"conn-failure", "empty-response"}  # never after a response started
    (defaults,) = [line for line in lines if line.startswith("default-server")]
    inter = float(re.search(r"\binter (\d+)s\b", defaults).group(1))  # type: ignore[union-attr]
    fall = int(re.search(r"\bfall (\d+)\b", defaults).group(1))  # type: ignore[union-attr]
    (timeout_check,) = [float(line.split()[2].rstrip("s")) for line in lines if line.startswith("timeout check")]
    assert inter * fall + timeout_check < ServerSettings().drain_readiness_grace_s
    servers = [line for line in lines if line.startswith("server ")]
    assert len(servers) == 2 and all("check-proto h1" in s and "port" in s for s in servers)
    haproxy = _haproxy()
    if haproxy is None:
        pytest.skip("haproxy is not installed (`make setup` installs it as root with apt-get): syntax not checked")
    env = {
        **os.environ,
        "NANOVL_LB_BIND": "127.0.0.1:50051",
        "NANOVL_LB_STATS": "127.0.0.1:8404",
        "NANOVL_REPLICA1": "127.0.0.1:50051",
        "NANOVL_REPLICA1_METRICS_PORT": "9464",
        "NANOVL_REPLICA2": "127.0.0.1:50061",
        "NANOVL_REPLICA2_METRICS_PORT": "9465",
    }
    done = subprocess.run([haproxy, "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
