"""The Kubernetes manifests (docker/kubernetes), checked without a cluster: every kustomization rendered
(genserve.deploy; compared with `kubectl kustomize` where kubectl is installed), every object validated
against the Kubernetes schemas offline (kubernetes-validate), and what makes the deployment work held
together: probes, drain and grace period, the autoscaling metric from end to end, GPU placement."""

from __future__ import annotations

import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from genserve import config, metrics
from genserve.cli import build_parser
from genserve.deploy import MANIFESTS_DIR, kustomizations, load_yaml_documents, render
from genserve.model_repositories import is_remote

KUBERNETES_VERSION = "1.37.0"
OVERLAYS = ("cpu", "gpu")  # with the repository on a volume; gpu-s3: in object storage
ADAPTER_RULES = MANIFESTS_DIR / "monitoring" / "prometheus-adapter-rules.yaml"
FOLDERS = kustomizations()


def test_the_base_and_both_overlays_are_there():
    assert {folder.relative_to(MANIFESTS_DIR).as_posix() for folder in FOLDERS} >= {
        "base",
        "overlays/cpu",
        "overlays/gpu",
    }


def overlay(name: str) -> dict[str, dict]:
    """An overlay's objects keyed by kind (one of each kind but Service) and Services by name."""
    objects = render(MANIFESTS_DIR / "overlays" / name)
    keyed = {obj["kind"]: obj for obj in objects if obj["kind"] != "Service"}
    keyed.update({f"Service/{obj['metadata']['name']}": obj for obj in objects if obj["kind"] == "Service"})
    return keyed


def pod_spec(objects: dict[str, dict]) -> dict:
    return objects["Deployment"]["spec"]["template"]["spec"]


def serve_args(objects: dict[str, dict]):
    """The container's arguments parsed by genserve's own command line (the image's entrypoint)."""
    (container,) = pod_spec(objects)["containers"]
    return build_parser().parse_args(container["args"])


def container_port(objects: dict[str, dict], name_or_number) -> int:
    (container,) = pod_spec(objects)["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    return ports[name_or_number] if isinstance(name_or_number, str) else name_or_number


def check_pod_monitor(obj: dict, labels: dict, port_names: set[str]) -> None:
    """The Prometheus operator's CRD has no schema in kubernetes-validate: its structure, by hand."""
    assert obj["apiVersion"] == "monitoring.coreos.com/v1" and obj["metadata"]["name"]
    assert set(obj) <= {"apiVersion", "kind", "metadata", "spec"}
    spec = obj["spec"]
    assert set(spec) <= {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel", "podTargetLabels"}
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["podMetricsEndpoints"], "no endpoint to scrape"
    for endpoint in spec["podMetricsEndpoints"]:
        assert set(endpoint) <= {
            "port",
            "path",
            "interval",
            "scrapeTimeout",
            "scheme",
            "honorLabels",
            "relabelings",
            "metricRelabelings",
        }
        assert endpoint["port"] in port_names and endpoint.get("path", "/metrics") == "/metrics"


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda folder: folder.relative_to(MANIFESTS_DIR).as_posix())
def test_every_object_is_valid_kubernetes(folder):
    objects = render(folder)
    assert objects
    deployment = next(obj for obj in objects if obj["kind"] == "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_names = {port["name"] for port in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    for obj in objects:
        if obj["kind"] == "PodMonitor":
            check_pod_monitor(obj, labels, port_names)
        else:  # strict: unknown fields are errors too
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    kinds = [obj["kind"] for obj in objects]
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "PodMonitor", "HorizontalPodAutoscaler"):
        assert kind in kinds, kind
    claims = [
        volume for volume in deployment["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in volume
    ]
    assert ("PersistentVolumeClaim" in kinds) == bool(claims)  # the repository's volume, or object storage


def test_an_invalid_object_is_caught():
    """The validation can fail: a probe with a misspelt field and a Deployment without a selector."""
    objects = overlay("cpu")
    broken = yaml.safe_load(yaml.safe_dump(objects["Deployment"]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    del broken["spec"]["selector"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("folder", FOLDERS, ids=lambda folder: folder.relative_to(MANIFESTS_DIR).as_posix())
def test_rendered_as_kubectl_kustomize_renders(folder):
    output = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, check=True, timeout=120
    ).stdout

    def keyed(objects):
        return {(obj["kind"], obj["metadata"]["name"]): obj for obj in objects}

    assert keyed(render(folder)) == keyed(list(yaml.safe_load_all(output)))


@pytest.mark.parametrize("name", OVERLAYS)
def test_probes_drain_and_serve_arguments(name):
    objects = overlay(name)
    spec = pod_spec(objects)
    (container,) = spec["containers"]
    args = serve_args(objects)
    assert args.command == "serve" and args.address == "0.0.0.0"
    # Probes on the HTTP port genserve serve listens on, at Triton's health endpoints (no admin key needed).
    probes = {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    for probe in probes.values():
        assert container_port(objects, probe["httpGet"]["port"]) == args.http_port
    assert (
        probes["startupProbe"]["httpGet"]["path"] == probes["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    )
    assert probes["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert {port["name"]: port["containerPort"] for port in container["ports"]} == {
        "http": args.http_port,
        "grpc": args.grpc_port,
        "metrics": args.metrics_port,
    }
    # SIGTERM drains in genserve serve, within the grace period; no preStop hook needed.
    assert spec["terminationGracePeriodSeconds"] >= args.drain_delay + args.drain_timeout
    assert args.drain_delay > 0 and "lifecycle" not in container
    # The admin key from a Secret, never in the manifests; the Python backend's /dev/shm in memory.
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    key_mount = next(path for path, volume in mounts.items() if args.admin_key_file.startswith(path + "/"))
    assert "secret" in volumes[mounts[key_mount]]
    assert config.ADMIN_KEY_ENV not in {env["name"] for env in container.get("env", [])}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    # The model repository from the claim the overlay creates, read-only.
    claim = volumes[mounts["/models"]]["persistentVolumeClaim"]
    assert claim["claimName"] == objects["PersistentVolumeClaim"]["metadata"]["name"] and "/models" in args.repositories
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]


@pytest.mark.parametrize("name", OVERLAYS)
def test_services_budget_and_monitor_select_the_pods(name):
    objects = overlay(name)
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    headless, service = objects["Service/genserve-headless"], objects["Service/genserve"]
    assert headless["spec"]["clusterIP"] == "None" and service["spec"].get("clusterIP") != "None"
    args = serve_args(objects)
    for svc in (headless, service):
        assert svc["spec"]["selector"].items() <= labels.items()
        grpc = next(port for port in svc["spec"]["ports"] if port["name"] == "grpc")
        assert container_port(objects, grpc["targetPort"]) == args.grpc_port
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = objects["PodMonitor"]["spec"]["podMetricsEndpoints"]
    assert container_port(objects, endpoint["port"]) == args.metrics_port


def adapter_rule() -> dict:
    (values,) = load_yaml_documents(ADAPTER_RULES)
    (rule,) = values["rules"]["custom"]
    return rule


def test_the_adapter_rule_is_the_tested_formula():
    """queue time per request = rate(queue duration) / rate(successes), summed per pod: the formula of
    genserve.metrics.queue_time_per_request, which tests/test_scale_out.py checks on a real server."""
    rule = adapter_rule()
    query = " ".join(rule["metricsQuery"].split())
    numerator, denominator = query.split(" / ")
    assert numerator == f"sum(rate({metrics.QUEUE_TIME}{{<<.LabelMatchers>>}}[1m])) by (<<.GroupBy>>)"
    assert denominator.startswith(
        f"clamp_min(sum(rate({metrics.SUCCESSES}{{<<.LabelMatchers>>}}[1m])) by (<<.GroupBy>>),"
    )
    assert metrics.QUEUE_TIME in rule["seriesQuery"]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_autoscaler_scales_the_deployment_on_the_adapter_s_metric(name):
    objects = overlay(name)
    hpa = objects["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        objects["Deployment"]["metadata"]["name"],
    )
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == adapter_rule()["name"]["as"]
    assert float(metric["pods"]["target"]["averageValue"]) > 0
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert "replicas" not in objects["Deployment"]["spec"]  # the autoscaler owns the count


def test_gpus_only_in_the_gpu_overlay_and_the_overlays_differ():
    cpu, gpu = overlay("cpu"), overlay("gpu")
    gpu_resources = pod_spec(gpu)["containers"][0]["resources"]
    assert gpu_resources["limits"]["nvidia.com/gpu"] == 1
    assert any(toleration["key"] == "nvidia.com/gpu" for toleration in pod_spec(gpu)["tolerations"])
    for objects in (cpu, {obj["kind"]: obj for obj in render(MANIFESTS_DIR / "base")}):
        assert "nvidia.com/gpu" not in yaml.safe_dump(list(objects.values()))
    images = [pod_spec(objects)["containers"][0]["image"] for objects in (cpu, gpu)]
    assert images[0] != images[1] and all(":" in image for image in images)
    assert cpu["HorizontalPodAutoscaler"]["spec"] != gpu["HorizontalPodAutoscaler"]["spec"]
    assert pod_spec(cpu)["containers"][0]["resources"] != gpu_resources


def test_the_object_storage_overlay_serves_a_bucket_instead_of_the_volume():
    gpu, s3 = overlay("gpu"), overlay("gpu-s3")
    args = serve_args(s3)
    (remote,) = [path for path in args.repositories if is_remote(path)]
    assert remote.startswith("s3://") and "/models" not in args.repositories
    assert "PersistentVolumeClaim" not in s3 and "persistentVolumeClaim" not in yaml.safe_dump(s3["Deployment"])
    (container,) = pod_spec(s3)["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "genserve-s3"}}]
    # The rest is the gpu overlay's.
    assert container["resources"] == pod_spec(gpu)["containers"][0]["resources"]
    assert vars(args) | {"repositories": ["/models"]} == vars(serve_args(gpu))
