"""Operational behaviour over real HTTP: readiness, overload, deadlines, disconnects, API key,
missing models, refusing to start, draining on shutdown."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import (PROMTOOL_MISSING, connected_clients, live_server, promtool_lint, serve, settings_for, slow_run,
                      wait_inflight)
from sample_images import encode, gradient

from dermagan.service.engine import Engine
from dermagan.service.runtime import StartupError
from dermagan.service.settings import Settings


def test_readyz_is_503_until_warm(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    original = Engine.warm
    monkeypatch.setattr(Engine, "warm", lambda self: (release.wait(10), original(self)))
    with live_server(settings_for(models_dir, models=("fixture-generate",)), wait_ready=False) as s, s.client() as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["error"] == "not_ready" and "Retry-After" in r.headers
        head = c.head("/readyz")  # what an uptime monitor or a load balancer's HEAD check sees
        assert head.status_code == 503 and head.content == b"" and "Retry-After" in head.headers
        assert c.post("/generate", json={"kind": "hand"}).status_code == 503
        assert c.get("/v1/models").json()[0]["ready"] is False
        release.set()
        t0 = time.monotonic()
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() - t0 < 10
            time.sleep(0.02)
        assert c.post("/generate", json={"kind": "hand"}).status_code == 200


def test_full_queue_answers_503_with_retry_after_at_once(models_dir: Path) -> None:
    settings = settings_for(models_dir, models=("fixture-generate",), queue_size=2, max_batch=1, retry_after_s=3)
    with live_server(settings) as s:
        slow_run(s, "fixture-generate", 1.2)

        def call(i: int) -> tuple[int, float, dict]:
            with s.client() as c:
                t0 = time.monotonic()
                r = c.post("/generate", json={"kind": "hand", "seed": i})
                return r.status_code, time.monotonic() - t0, dict(r.headers)

        with cf.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(call, range(8)))
        codes = [code for code, _, _ in results]
        assert codes.count(200) >= 3 and codes.count(503) >= 1 and set(codes) <= {200, 503}, codes
        for code, seconds, headers in results:
            if code == 503:
                assert headers["retry-after"] == "3"
                assert seconds < 0.8  # answered at once, not after the running batch (1.2 s)
        with s.client() as c:
            assert 'dermagan_request_failures_total{model="fixture-generate",reason="queue_full"}' in c.get("/metrics").text


def test_deadline_gives_504_and_the_request_is_not_run(models_dir: Path) -> None:
    settings = settings_for(models_dir, models=("fixture-generate",), request_timeout_s=0.3, max_batch=1)
    with live_server(settings) as s:
        running = slow_run(s, "fixture-generate", 1.5)
        with cf.ThreadPoolExecutor(2) as pool, s.client() as c:
            first = pool.submit(c.post, "/generate", json={"kind": "hand"})
            assert running.wait(10)
            started = t0 = time.monotonic()
            second = c.post("/generate", json={"kind": "hand"})
            assert second.status_code == 504 and second.json()["error"] == "deadline"
            assert time.monotonic() - t0 < 1.0  # at the deadline (0.3 s), while the first batch (1.5 s) still runs
            # it names the request's deadline, not what was left of it when it reached the model (before 2026-12-05:
            # "waited more than 0.2984 s")
            assert re.fullmatch(r"the request did not finish within its 0\.3 s deadline; it had waited [\d.]+ s of "
                                r"it for model 'fixture-generate'", second.json()["detail"]), second.text
            assert first.result().status_code == 504  # its batch ran past the deadline too
            time.sleep(max(0.0, started + 2.0 - time.monotonic()))  # the first batch is over: the second could run
            text = c.get("/metrics").text
        assert 'dermagan_batch_size_count{model="fixture-generate"} 1.0' in text  # the second never ran


def test_disconnected_client_is_not_run(models_dir: Path) -> None:
    settings = settings_for(models_dir, models=("fixture-generate",), max_batch=1)
    with live_server(settings) as s:
        running = slow_run(s, "fixture-generate", 1.0)
        with cf.ThreadPoolExecutor(2) as pool, s.client() as c:
            first = pool.submit(c.post, "/generate", json={"kind": "hand"})
            assert running.wait(10)
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(s.url + "/generate", json={"kind": "hand"}, timeout=0.15)
            assert first.result().status_code == 200
            time.sleep(0.2)
            text = c.get("/metrics").text
        assert 'dermagan_request_failures_total{model="fixture-generate",reason="cancelled"} 1.0' in text
        assert 'dermagan_batch_size_count{model="fixture-generate"} 1.0' in text


def test_metrics_pass_prometheus_lint_and_have_no_created_series(models_dir: Path) -> None:
    """What a Prometheus server scrapes: every family named and typed as its linter wants, and no `*_created`
    series (one process exposes the families `--workers N` does; test_workers lints that exposition)."""
    with live_server(settings_for(models_dir, models=("fixture-generate",))) as s, s.client() as c:
        assert c.post("/generate", json={"kind": "hand"}).status_code == 200
        assert c.post("/generate", json={"kind": "hands"}).status_code == 422
        text = c.get("/metrics").text
    assert 'dermagan_requests_total{code="200",endpoint="/generate",model="fixture-generate"} 1.0' in text
    assert "_created" not in text
    complaints = promtool_lint(text)
    if complaints is None:
        pytest.skip(PROMTOOL_MISSING)
    assert complaints == "", complaints


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; names threads with prctl")
def test_the_model_and_codec_threads_carry_their_names_in_the_os(models_dir: Path) -> None:
    """`top -H`, `ps -L` and /proc name a thread by its kernel name: the service's pools give theirs (Python
    before 3.14 leaves every thread "python"), so an operator and bench_cpu_split tell the model's from the codec's."""
    def names() -> set[str]:
        tasks = Path("/proc/self/task")
        out = set()
        for t in tasks.iterdir():
            try:
                out.add((t / "comm").read_text().strip())
            except OSError:  # a thread that ended meanwhile
                pass
        return out

    with live_server(settings_for(models_dir, models=("fixture-generate",))) as s, s.client() as c:
        assert c.post("/generate", json={"kind": "hand"}).status_code == 200
        seen = names()
    assert "infer-fixture-g" in seen and "codec_0" in seen, seen  # "infer-fixture-generate_0" cut to 15 bytes


def test_head_is_answered_wherever_get_is_and_options_everywhere(models_dir: Path) -> None:
    """RFC 9110: a server answers HEAD like GET, without the body (uptime monitors and `curl -I` use it), and
    OPTIONS with what a path allows (HAProxy's bare `option httpchk` sends `OPTIONS /`: a 405 marks it down)."""
    with live_server(settings_for(models_dir, models=("fixture-generate",), docs=True)) as s, s.client() as c:
        for path in ("/healthz", "/readyz", "/v1/models", "/metrics", "/docs", "/redoc", "/openapi.json"):
            got, head = c.get(path), c.head(path)
            assert head.status_code == got.status_code == 200 and head.content == b"", path
            assert head.headers["content-type"] == got.headers["content-type"], path
            if path != "/metrics":  # (its counters moved between the two)
                assert head.headers["content-length"] == got.headers["content-length"], path
        assert c.head("/").status_code == 307
        for path in ("/generate", "/eczema/add", "/eczema/remove", "/eczema/segment"):
            r = c.head(path)
            assert r.status_code == 405 and r.headers["allow"] == "OPTIONS, POST" and r.content == b"", path
        # a 405's Allow is what OPTIONS says, not the one route Starlette tried
        assert c.post("/healthz").headers["allow"] == c.options("/healthz").headers["allow"] == "GET, HEAD, OPTIONS"
        assert c.head("/nowhere").status_code == 404
        for path, allow in (("/", "GET, HEAD, OPTIONS"), ("/healthz", "GET, HEAD, OPTIONS"),
                            ("/openapi.json", "GET, HEAD, OPTIONS"), ("/generate", "OPTIONS, POST"),
                            ("/eczema/segment", "OPTIONS, POST")):
            r = c.options(path)
            assert r.status_code == 204 and r.headers["allow"] == allow and r.content == b"", path
        assert c.options("/nowhere").status_code == 404
        paths = c.get("/openapi.json").json()["paths"]
        assert all(not {"head", "options"} & set(operations) for operations in paths.values()), paths  # not documented
        assert c.post("/generate", json={"kind": "hand"}).status_code == 200


def test_several_api_keys_are_each_accepted_for_a_rotation(models_dir: Path) -> None:
    settings = settings_for(models_dir, models=("fixture-generate",), api_key="old-key,new-key")
    with live_server(settings) as s, s.client() as c:
        for key in ("old-key", "new-key"):
            assert c.get("/v1/models", headers={"X-API-Key": key}).status_code == 200
            assert c.post("/generate", json={"kind": "hand"}, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        for wrong in ("old-key,new-key", "old", "new-keyx", ""):
            assert c.get("/v1/models", headers={"X-API-Key": wrong}).status_code == 401, wrong


def test_the_start_up_line_says_whether_clients_need_an_api_key(models_dir: Path) -> None:
    """An empty DERMAGAN_API_KEY (a compose file's or a template's variable with no value) means an open service:
    the line that says where it serves says so, and how many keys it accepts otherwise."""
    for key, said in (("", " (no API key: open to every client)"), ("old-key, new-key", " (API key required: 2 keys)")):
        with serve(models_dir, DERMAGAN_MODELS="fixture-segment", DERMAGAN_API_KEY=key) as s:
            line = next(line for line in s.text().splitlines() if "dermagan serving on" in line)
            assert line.endswith(f"dermagan serving on {s.url}{said}"), line
            assert "old-key" not in s.text()
            # the admission limits in force, computed ones too (only a 503's detail showed one)
            assert re.search(r"limits: \d+ work requests in flight \(DERMAGAN_MAX_INFLIGHT: queue \+ 2 x codec threads "
                             r"x workers\), \d+ uploads this worker .* 64 queued per model", s.text()), s.text()


def test_api_key_is_required_everywhere_but_health_and_docs(models_dir: Path) -> None:
    """(The documentation pages are open: test_docs_pages.py.)"""
    with live_server(settings_for(models_dir, models=("fixture-generate",), api_key="s3cret")) as s, s.client() as c:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.head("/healthz").status_code == 200 and c.head("/readyz").status_code == 200
        for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/generate"),
                             ("POST", "/eczema/add")):
            r = c.request(method, path)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", path
        assert c.head("/v1/models").status_code == 401 and c.head("/metrics").status_code == 401
        assert c.get("/v1/models", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.post("/generate", json={"kind": "hand"}, headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_every_answer_carries_a_request_id_that_its_access_line_and_error_log_name(
        models_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """X-Request-ID: a balancer's own is echoed, else a new one; one access line per request (client,
    request line without its query string, status, time, model, ID); an unexpected error's log names
    the ID; nothing of the image, query string or other headers reaches the log."""
    caplog.set_level("INFO", logger="dermagan.access")
    image = encode(gradient(24, 32))
    with live_server(settings_for(models_dir, models=("fixture-generate", "fixture-segment"), api_key="k")) as s, \
            s.client(headers={"X-API-Key": "k"}) as c:
        answers = [c.post("/eczema/segment?patient=jane-doe", files={"image": ("jane-doe.png", image)},
                          headers={"X-Request-ID": "lb-1"}),
                   c.post("/generate", json={"kind": "hand"}, headers={"X-Request-ID": "Root=1-67891233-abcdef;p=2"}),
                   c.post("/generate", json={"kind": "nope"}, headers={"X-Request-ID": "x" * 129}),  # too long
                   c.get("/nowhere%0A127.0.0.1:1%20%22GET%20/forged"),
                   c.get("/healthz", headers={"X-API-Key": "wrong"}),  # (a probe: not logged)
                   c.get("/metrics", headers={"X-API-Key": "wrong", "X-Request-ID": "a b"})]
        assert [r.status_code for r in answers] == [200, 200, 422, 404, 200, 401]
        ids = [r.headers["x-request-id"] for r in answers]
        assert ids[:2] == ["lb-1", "Root=1-67891233-abcdef;p=2"]
        assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids[2:]) and len(set(ids)) == len(ids)

        def broken(feeds):  # an inference failure the service did not expect
            raise KeyError("boom")

        s.runtime.batchers["fixture-segment"]._run = broken
        failed = c.post("/eczema/segment", files={"image": ("i", image)}, headers={"X-Request-ID": "lb-500"})
        assert failed.status_code == 500 and failed.headers["x-request-id"] == "lb-500"
        # every error body names the ID too, to quote when reporting it
        for r in (*answers[2:4], answers[5], failed):
            assert r.json()["request_id"] == r.headers["x-request-id"], r.text

        def unexpected(*_: object, **__: object) -> None:  # not a ServiceError: Starlette's outermost middleware answers it
            raise RuntimeError("a bug")

        s.runtime.model_for = unexpected
        bug = c.post("/eczema/segment", files={"image": ("i", image)}, headers={"X-Request-ID": "lb-bug"})
        assert bug.status_code == 500 and bug.headers["x-request-id"] == "lb-bug"
        assert bug.json() == {"error": "internal", "detail": "unexpected server error (RuntimeError)",
                              "request_id": "lb-bug"}
        # and none is for a browser to sniff into another type (an error's JSON can quote form field names)
        assert all(r.headers["x-content-type-options"] == "nosniff" for r in (*answers, failed, bug))
    # (the fixture's readiness polls: their 503s while warming are logged, their 200 is not)
    lines = [r.getMessage() for r in caplog.records if r.name == "dermagan.access" and "/readyz" not in r.getMessage()]
    expected = [("POST /eczema/segment", 200, "fixture-segment", "lb-1"),
                ("POST /generate", 200, "fixture-generate", "Root=1-67891233-abcdef;p=2"),
                ("POST /generate", 422, "-", ids[2]), ("GET /nowhere%0A127.0.0.1%3A1%20%22GET%20/forged", 404, "-", ids[3]),
                ("GET /metrics", 401, "-", ids[5]),
                ("POST /eczema/segment", 500, "fixture-segment", "lb-500"),
                ("POST /eczema/segment", 500, "-", "lb-bug")]
    assert len(lines) == len(expected), lines
    for line, (request, status, model, rid) in zip(lines, expected):
        assert re.fullmatch(rf'127\.0\.0\.1:\d+ "{request} HTTP/1\.1" {status} \d+\.\d ms model={model} '
                            rf"request_id={re.escape(rid)}", line), line
    errors = [r.getMessage() for r in caplog.records if r.name == "dermagan.service" and r.levelname == "ERROR"]
    assert any("request_id=lb-500" in e for e in errors), errors  # the batch that failed names it
    assert any(e.startswith("unexpected RuntimeError in POST /eczema/segment (request_id=lb-bug)") for e in errors)
    assert not any("jane" in r.getMessage() for r in caplog.records)


def test_cors_lets_the_configured_web_origins_call_and_read_the_answer(models_dir: Path) -> None:
    """DERMAGAN_CORS_ORIGINS: a browser's preflight is answered without the API key; the answer of the
    real request lets the page read X-Request-ID and the model's name; other origins get no grant; a
    503 while full still carries the grant (the early refusal leaves browsers' requests to the Gate)."""
    page = "https://annotate.example.org"
    settings = settings_for(models_dir, models=("fixture-segment",), api_key="k", cors_origins=(page,), max_inflight=1)
    image = encode(gradient(24, 32))
    with live_server(settings) as s, s.client() as c:
        pre = c.options("/eczema/segment", headers={"Origin": page, "Access-Control-Request-Method": "POST",
                                                    "Access-Control-Request-Headers": "x-api-key, x-request-id"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == page
        assert {"x-api-key", "x-request-id"} <= set(pre.headers["access-control-allow-headers"].lower().split(", "))
        r = c.post("/eczema/segment", files={"image": ("i", image)}, headers={"Origin": page, "X-API-Key": "k"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == page
        assert {"x-request-id", "x-dermagan-model", "retry-after"} <= set(
            r.headers["access-control-expose-headers"].lower().split(", "))
        other = c.options("/eczema/segment", headers={"Origin": "https://elsewhere.example",
                                                      "Access-Control-Request-Method": "POST"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        assert c.post("/eczema/segment", files={"image": ("i", image)},
                      headers={"Origin": page}).status_code == 401  # the key is still needed
        slow_run(s, "fixture-segment", 1.0)
        with cf.ThreadPoolExecutor(1) as pool:
            held = pool.submit(c.post, "/eczema/segment", files={"image": ("i", image)}, headers={"X-API-Key": "k"})
            t0 = time.monotonic()
            while "dermagan_inflight_requests 1.0" not in c.get("/metrics", headers={"X-API-Key": "k"}).text:
                assert time.monotonic() - t0 < 5 and not held.done()
                time.sleep(0.01)
            with s.client() as other_client:
                full = other_client.post("/eczema/segment", files={"image": ("i", image)},
                                         headers={"Origin": page, "X-API-Key": "k"})
            assert full.status_code == 503 and full.headers["access-control-allow-origin"] == page
            assert held.result().status_code == 200
    with pytest.raises(ValueError, match="DERMAGAN_CORS_ORIGINS: .*'annotate.example.org/' is not an origin"):
        Settings.from_env({"DERMAGAN_CORS_ORIGINS": "https://ok.example, annotate.example.org/"})


def test_endpoint_without_its_model_names_the_task(models_dir: Path) -> None:
    """503 model_unavailable, without Retry-After: a service without a segment model will not have one in a
    second (RFC 9110: a 503 without one is handled as a 500)."""
    settings = settings_for(models_dir, models=("fixture-generate", "fixture-add"), retry_after_s=3)
    with live_server(settings) as s, s.client() as c:
        r = c.post("/eczema/segment", files={"image": ("i", encode(gradient(10, 10)))})
        assert r.status_code == 503 and r.json()["error"] == "model_unavailable"
        assert "'segment'" in r.json()["detail"]
        assert "retry-after" not in r.headers and "retrying will not help" in r.json()["detail"]
        r = c.post("/eczema/add", files={"image": ("i", encode(gradient(10, 10)))})  # no mask: cycle-add
        assert r.status_code == 503 and "'cycle-add'" in r.json()["detail"]


def _copy(models_dir: Path, dest: Path) -> Path:
    shutil.copytree(models_dir, dest)
    return dest


def _serve(folder: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DERMAGAN_PORT": "0", "DERMAGAN_HOST": "127.0.0.1"}
    return subprocess.run([sys.executable, "-m", "dermagan.cli", "serve", "--models-dir", str(folder)],
                          capture_output=True, text=True, timeout=60, env=env)


def test_refuses_to_start_on_missing_file_or_hash_mismatch(models_dir: Path, tmp_path: Path) -> None:
    missing = _copy(models_dir, tmp_path / "missing")
    (missing / "fixture-add.onnx").unlink()
    r = _serve(missing)
    assert r.returncode == 2 and "fixture-add.onnx" in r.stderr and "missing" in r.stderr
    tampered = _copy(models_dir, tmp_path / "tampered")
    with open(tampered / "fixture-segment.onnx", "ab") as f:
        f.write(b"\0")
    r = _serve(tampered)
    assert r.returncode == 2 and "fixture-segment.onnx" in r.stderr and "sha256" in r.stderr


def test_refuses_to_start_on_a_corrupt_graph_or_unknown_provider(models_dir: Path, tmp_path: Path) -> None:
    import asyncio

    from dermagan.manifest import load_manifest, save_manifest, sha256_file
    from dermagan.service.metrics import Metrics
    from dermagan.service.runtime import ModelRuntime

    corrupt = _copy(models_dir, tmp_path / "corrupt")
    (corrupt / "fixture-add.onnx").write_bytes(b"not a protobuf")
    manifest = load_manifest(corrupt, verify=False)
    entry = manifest.get("fixture-add")
    manifest.upsert(entry.model_copy(update={"sha256": sha256_file(corrupt / "fixture-add.onnx")}))
    save_manifest(corrupt, manifest)
    with pytest.raises(StartupError, match="fixture-add.onnx"):
        asyncio.run(ModelRuntime(settings_for(corrupt), Metrics()).load())
    with pytest.raises(StartupError, match="unknown execution providers"):
        asyncio.run(ModelRuntime(settings_for(models_dir, providers=("TPUProvider",)), Metrics()).load())
    with pytest.raises(StartupError, match="does not have"):
        asyncio.run(ModelRuntime(settings_for(models_dir, models=("nope",)), Metrics()).load())
    m = json.loads((corrupt / "manifest.json").read_text())
    assert m["models"]  # the manifest itself stayed valid: the graph was the problem

    # `dermagan serve --check` tells a deployment pipeline the same, without serving
    check = [sys.executable, "-m", "dermagan.cli", "serve", "--check", "--log-level", "warning", "--models-dir"]
    env = {**os.environ, "DERMAGAN_PROVIDERS": "CPUExecutionProvider"}
    r = subprocess.run([*check, str(corrupt)], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2 and "it would refuse to start" in r.stderr and "fixture-add.onnx" in r.stderr
    r = subprocess.run([*check, str(models_dir)], capture_output=True, text=True, timeout=60,
                       env={**env, "DERMAGAN_PROVIDERS": "TPUProvider"})
    assert r.returncode == 2 and "unknown execution providers" in r.stderr
    r = subprocess.run([*check, str(models_dir)], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[:-1]}
    assert set(rows) == {e.name for e in load_manifest(models_dir).models}
    assert "CPUExecutionProvider" in rows["fixture-add"] and rows["fixture-add"].endswith("serves: add")
    assert r.stdout.splitlines()[-1].startswith("ok: 6 models of ")


def test_a_port_in_use_is_said_before_any_model_is_loaded(models_dir: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = {**os.environ, "DERMAGAN_PORT": str(port), "DERMAGAN_HOST": "127.0.0.1", "DERMAGAN_LOG_LEVEL": "info",
               "DERMAGAN_PROVIDERS": "CPUExecutionProvider"}
        r = subprocess.run([sys.executable, "-m", "dermagan.cli", "serve", "--models-dir", str(models_dir)], env=env,
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert f"dermagan serve: cannot listen on 127.0.0.1:{port}: Address already in use" in r.stderr
    assert "loaded from" not in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_sigterm_drains_accepted_requests(models_dir: Path) -> None:
    env = {**os.environ, "DERMAGAN_PORT": "0", "DERMAGAN_HOST": "127.0.0.1", "DERMAGAN_MODELS": "fixture-cycle-remove",
           "DERMAGAN_PROVIDERS": "CPUExecutionProvider", "DERMAGAN_INTRA_OP_THREADS": "1", "DERMAGAN_LOG_LEVEL": "info"}
    proc = subprocess.Popen([sys.executable, "-m", "dermagan.cli", "serve", "--models-dir", str(models_dir)],
                            stderr=subprocess.PIPE, text=True, env=env)
    image = encode(gradient(1200, 1600))  # ~600 tiles per request at its own size: all six are in flight at once
    try:
        url = None
        for line in proc.stderr:  # "dermagan serving on http://127.0.0.1:PORT"
            if "serving on" in line:
                url = line.split("serving on ")[1].split()[0]
                break
        assert url
        # keep reading: a full pipe would block the server's logging (each /metrics poll below logs a line)
        rest: list[str] = []
        threading.Thread(target=lambda: rest.extend(proc.stderr), daemon=True).start()
        t0 = time.monotonic()
        while httpx.get(url + "/readyz").status_code != 200:
            assert time.monotonic() - t0 < 20
            time.sleep(0.05)
        def call(c: httpx.Client) -> tuple[int, float]:
            r = c.post("/eczema/remove", files={"image": ("i", image)}, data={"work_px": "1200"})
            return r.status_code, time.monotonic()

        # connected first, so every request below is accepted before the signal
        with connected_clients(url, 6) as clients, cf.ThreadPoolExecutor(6) as pool:
            calls = [pool.submit(call, c) for c in clients]
            wait_inflight(url, 6)
            signalled = time.monotonic()
            proc.terminate()
            results = [c.result() for c in calls]
        assert [code for code, _ in results] == [200] * 6
        assert max(done for _, done in results) > signalled, "nothing was in flight at the signal"
        assert proc.wait(timeout=30) == 0  # drained: a clean exit, not death by SIGTERM
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/healthz")
    finally:
        if proc.poll() is None:
            proc.kill()


# ---- admission control and the codec pool (overload before the batcher) ---------------------

def slow_decode(monkeypatch: pytest.MonkeyPatch, seconds: float) -> list[float]:
    """Make /eczema/segment's decode take `seconds`; returns the monotonic start time of each decode."""
    from dermagan.service import pipeline

    starts: list[float] = []
    original = pipeline.plan_segment

    def plan_segment(*args, **kwargs):
        starts.append(time.monotonic())
        time.sleep(seconds)
        return original(*args, **kwargs)

    monkeypatch.setattr(pipeline, "plan_segment", plan_segment)
    return starts


def test_over_the_inflight_limit_answers_503_before_reading_the_body(models_dir: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    decodes = slow_decode(monkeypatch, 1.5)
    rng = np.random.default_rng(0)
    big = encode(rng.integers(0, 256, (600, 600, 3), dtype=np.uint8))  # ~1 MB: refused bodies must not reset
    settings = settings_for(models_dir, models=("fixture-segment",), max_inflight=2, codec_threads=1, retry_after_s=2)
    with live_server(settings) as s:
        clients = [s.client() for _ in range(8)]
        for c in clients:  # connected before the burst: the timings below are the server's, not TCP set-up
            assert c.get("/healthz").status_code == 200

        def call(c: httpx.Client) -> tuple[int, float, dict[str, str], dict]:
            t0 = time.monotonic()
            r = c.post("/eczema/segment", files={"image": ("i.png", big, "image/png")})
            return r.status_code, time.monotonic() - t0, dict(r.headers), r.json() if r.status_code != 200 else {}

        try:
            with cf.ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(call, c) for c in clients]
                time.sleep(0.2)
                t0 = time.monotonic()
                health = httpx.get(s.url + "/healthz", timeout=5)
                assert health.status_code == 200 and time.monotonic() - t0 < 1.0  # never limited
                results = [f.result(timeout=15) for f in futures]
            codes = [r[0] for r in results]
            assert set(codes) <= {200, 503} and codes.count(200) >= 2 and codes.count(503) >= 4, codes
            refused = [(seconds, headers, body) for code, seconds, headers, body in results if code == 503]
            for seconds, headers, body in refused:
                assert headers["retry-after"] == "2" and body["error"] == "queue_full", body
            slowest = max(seconds for seconds, _, _ in refused)
            print(f"503 latencies ms: {sorted(round(r[0] * 1000, 1) for r in refused)}")
            assert slowest < 0.5, f"503 took {slowest * 1000:.0f} ms"  # at once, not after a 1.5 s decode
            assert len(decodes) == codes.count(200)  # refused requests were never decoded
            # the connections of refused requests are still usable (no reset, body drained)
            for c in clients:
                assert c.get("/healthz").status_code == 200
            text = clients[0].get("/metrics").text
            assert f'dermagan_request_failures_total{{model="",reason="queue_full"}} {codes.count(503)}.0' in text
            assert "dermagan_inflight_requests 0.0" in text
        finally:
            for c in clients:
                c.close()


def test_deadline_passing_while_waiting_for_the_codec_gives_504_without_decoding(
        models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decodes = slow_decode(monkeypatch, 2.0)
    image = encode(gradient(40, 40))
    settings = settings_for(models_dir, models=("fixture-segment",), codec_threads=1, request_timeout_s=0.5)
    with live_server(settings) as s, s.client() as c, cf.ThreadPoolExecutor(1) as pool:
        first = pool.submit(c.post, "/eczema/segment", files={"image": ("i.png", image, "image/png")})
        while not decodes:  # the first request holds the only codec thread
            time.sleep(0.01)
        t0 = time.monotonic()
        with s.client() as c2:
            second = c2.post("/eczema/segment", files={"image": ("i.png", image, "image/png")})
        waited = time.monotonic() - t0
        assert second.status_code == 504 and second.json()["error"] == "deadline", second.text
        assert 0.4 < waited < 1.5  # at its deadline (0.5 s), while the first decode (2 s) still runs
        assert first.result(timeout=5).status_code == 504  # its own decode ran past the deadline
        time.sleep(2.2)  # the codec thread is free again: the second request's decode must not start
        assert len(decodes) == 1
        text = c.get("/metrics").text
        assert 'dermagan_request_failures_total{model="fixture-segment",reason="deadline"} 2.0' in text
