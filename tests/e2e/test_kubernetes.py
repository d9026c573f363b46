"""deploy/kubernetes.yaml: valid for the Kubernetes API (strict schemas of the oldest and newest
versions we support, offline), and agreeing with the image and the service it runs -- the port, the
probes' paths (no API key), the drain inside the grace period, the settings' names, the user, a
writable /tmp on a read-only root, and a memory limit that holds the warm models plus the image budget."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dermagan.service.app import PUBLIC_PATHS, create_app
from dermagan.service.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kubernetes.yaml"
DOCS = list(yaml.safe_load_all(MANIFEST.read_text()))
#: The oldest Kubernetes whose API the manifest must fit (policy/v1 PDB and autoscaling/v2 HPA are GA
#: from 1.23), and the newest the validator knows.
VERSIONS = ("1.28.0", None)
#: bench/results/memory-2026-12-04.md: resident memory of the service with the seven shipped models, warm;
#: a codec thread's working memory on a photograph of the largest size served (16 MP; ~250 MiB at 12 MP);
#: memory per megapixel of image budget. The limit must hold them all.
WARM_MIB, CODEC_THREAD_MIB, MIB_PER_BUDGET_MP = 700, 350, 3


def _kind(kind: str) -> dict[str, Any]:
    return next(d for d in DOCS if d["kind"] == kind)


def _container() -> dict[str, Any]:
    return _kind("Deployment")["spec"]["template"]["spec"]["containers"][0]


def _env() -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in _container()["env"]}


def _mib(quantity: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", quantity).groups()
    return float(number) * {"Mi": 1, "Gi": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}[unit]


@pytest.mark.parametrize("version", VERSIONS)
def test_the_manifest_is_valid_for_the_kubernetes_api(version: str | None) -> None:
    import kubernetes_validate

    version = version or kubernetes_validate.latest_version()
    assert [d["kind"] for d in DOCS] == ["Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"]
    for doc in DOCS:
        kubernetes_validate.validate(doc, version, strict=True)  # raises naming the field


def test_the_manifest_agrees_with_the_image_and_the_service() -> None:
    pod = _kind("Deployment")["spec"]["template"]["spec"]
    c, env = _container(), _env()
    dockerfile = (ROOT / "Dockerfile").read_text()
    # the port: the image's, the service's setting, the Service's target
    port = c["ports"][0]["containerPort"]
    assert f"EXPOSE {port}" in dockerfile and env["DERMAGAN_PORT"] == str(port)
    assert _kind("Service")["spec"]["ports"][0]["targetPort"] == c["ports"][0]["name"]
    # every variable is a setting of the service
    unknown = [k for k in env if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX):].lower() not in Settings.model_fields]
    assert not unknown, unknown
    assert Settings.from_env(env)  # and their values are valid
    # probes: real routes that need no API key; readiness is the one that turns 503 during a drain
    routes = {r.path for r in create_app(Settings.from_env({})).routes}
    for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert c[probe]["httpGet"]["path"] == path and path in routes and path in PUBLIC_PATHS
    # termination: the preStop pause plus the drain fit in the grace period
    pause = float(re.search(r"sleep\((\d+(?:\.\d+)?)\)", " ".join(c["lifecycle"]["preStop"]["exec"]["command"])).group(1))
    assert pause + float(env["DERMAGAN_DRAIN_TIMEOUT_S"]) + 5 <= pod["terminationGracePeriodSeconds"]
    # the image's user, a read-only root with a writable /tmp, no privileges
    user = re.search(r"^USER (\d+):(\d+)", dockerfile, re.M)
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == tuple(map(int, user.groups()))
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert [m["mountPath"] for m in c["volumeMounts"]] == ["/tmp"]
    # CPU: a whole number of cores, limit = request (the service sizes its threads by the quota)
    assert c["resources"]["limits"]["cpu"] == c["resources"]["requests"]["cpu"]
    # memory: the warm models, the codec threads' work and the image budget fit under the limit, with room
    limit, cores = _mib(c["resources"]["limits"]["memory"]), int(c["resources"]["limits"]["cpu"])
    need = WARM_MIB + CODEC_THREAD_MIB * cores + MIB_PER_BUDGET_MP * float(env["DERMAGAN_IMAGE_BUDGET_MP"])
    assert need * 1.25 <= limit, (need, limit)
    # keep-alive above the common balancers' 60 s idle timeout
    assert int(env["DERMAGAN_KEEP_ALIVE_S"]) > 60
