"""deploy/k8s/ checked offline (ADR 0031): each manifest loads into the official ``kubernetes``
client's typed models and serialises back to exactly what the file says (a misspelt or unknown
field is dropped by the models, so the round trip catches it); every ``MESSAGING_*`` name is a
setting and production accepts the configuration; the probes point at the app's real routes;
the ports agree with the image (Dockerfile). No network, no cluster."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from messaging.bootstrap import create_app
from messaging.settings import Settings, env_var, from_env

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
MODELS = {
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("v1", "Service"): "V1Service",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2HorizontalPodAutoscaler",
}


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                found.append((path.name, doc))
    return found


def by_kind(kind: str) -> dict[str, Any]:
    matches = [doc for _, doc in documents() if doc["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def typed(doc: dict[str, Any]) -> Any:
    model = MODELS[(doc["apiVersion"], doc["kind"])]
    api = client.ApiClient()
    return api._ApiClient__deserialize(doc, model)  # type: ignore[attr-defined]


def test_every_kind_the_target_needs_is_there() -> None:
    kinds = sorted(doc["kind"] for _, doc in documents())
    assert kinds == sorted(kind for _, kind in MODELS)


@pytest.mark.parametrize(
    ("name", "doc"), documents(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_each_manifest_round_trips_through_the_typed_models(name: str, doc: dict[str, Any]) -> None:
    assert (doc["apiVersion"], doc["kind"]) in MODELS, f"{name}: unknown kind"
    obj = typed(doc)
    back = client.ApiClient().sanitize_for_serialization(obj)
    assert back == doc, f"{name}: a field the models do not know was dropped"


def test_an_unknown_field_fails_the_round_trip() -> None:
    doc = by_kind("Deployment")
    broken = {**doc, "spec": {**doc["spec"], "replica": 3}}
    assert client.ApiClient().sanitize_for_serialization(typed(broken)) != broken


def _container() -> dict[str, Any]:
    containers = by_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def test_every_messaging_variable_is_a_setting_and_production_accepts_them() -> None:
    config = by_kind("ConfigMap")["data"]
    env = {e["name"]: e for e in _container()["env"]}
    names = [*config, *env]
    known = {env_var(field) for field in attrs_fields()}
    unknown = [n for n in names if n.startswith("MESSAGING_") and n not in known]
    assert not unknown, f"not settings: {unknown}"
    # The JWT secret comes from a Secret, never a literal, and production accepts the rest.
    assert "value" not in env["MESSAGING_JWT_SECRET"]
    assert env["MESSAGING_JWT_SECRET"]["valueFrom"]["secretKeyRef"]["name"]
    settings = from_env({**config, "MESSAGING_JWT_SECRET": "k" * 48})
    assert settings.is_production
    assert settings.dynamodb_endpoint == ""  # real AWS
    assert settings.otp_sender != "dev"


def attrs_fields() -> list[str]:
    import attrs

    return [f.name for f in attrs.fields(Settings)]


def test_the_probes_point_at_real_routes_on_the_named_port() -> None:
    paths = {getattr(route, "path", None) for route in create_app(Settings()).routes}
    container = _container()
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {k: container[k] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for kind, probe in probes.items():
        assert probe["httpGet"]["path"] in paths, kind
        assert probe["httpGet"]["port"] in port_names, kind


def test_the_ports_agree_with_the_image_and_the_service() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    exposed = int(re.search(r"^EXPOSE (\d+)", dockerfile, re.M).group(1))  # type: ignore[union-attr]
    container = _container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == exposed
    assert int(by_kind("ConfigMap")["data"]["MESSAGING_PORT"]) == exposed
    assert re.search(r'^ENTRYPOINT \["messaging"\]', dockerfile, re.M)
    assert container["args"] == ["serve"]
    service = by_kind("Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    labels = by_kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert (
        by_kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    )


def test_termination_fits_the_drain() -> None:
    from messaging.bootstrap import DRAIN_SECONDS

    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    graceful_shutdown = 10  # uvicorn's timeout_graceful_shutdown in messaging.serving
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + DRAIN_SECONDS + graceful_shutdown
    hpa = by_kind("HorizontalPodAutoscaler")["spec"]
    partitions = int(by_kind("ConfigMap")["data"]["MESSAGING_KAFKA_MESSAGES_PARTITIONS"])
    assert hpa["maxReplicas"] <= partitions  # every consuming pod can own a partition
    assert by_kind("Deployment")["spec"]["replicas"] == hpa["minReplicas"]
