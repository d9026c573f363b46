"""SIGHUP reloads the models in place, for real (`dermagan serve` as a subprocess, one process and two
workers): the folder's new models are verified, opened and warmed beside the serving ones while a client
keeps calling -- every call answered 200 -- then served; a folder that cannot serve is refused, naming the
file, and the models loaded before serve on."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from conftest import serve
from sample_images import encode, gradient

MODELS = "fixture-segment,fixture-generate"


def _versions(url: str) -> dict[str, str]:
    return {m["name"]: m["version"] for m in httpx.get(url + "/v1/models").json()}


def _edit_manifest(folder: Path, **changes: str) -> None:
    path = folder / "manifest.json"
    doc = json.loads(path.read_text())
    for entry in doc["models"]:
        if entry["name"] == "fixture-segment":
            entry.update(changes)
    path.write_text(json.dumps(doc, indent=2))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sighup_swaps_the_models_without_refusing_anyone(models_dir: Path, tmp_path: Path, workers: str) -> None:
    folder = tmp_path / "models"
    shutil.copytree(models_dir, folder)
    image = encode(gradient(64, 80))
    codes: Counter[int] = Counter()
    stop = threading.Event()
    with serve(folder, DERMAGAN_MODELS=MODELS, DERMAGAN_WORKERS=workers) as s:
        def call() -> None:
            with httpx.Client(base_url=s.url, timeout=30) as c:
                while not stop.is_set():
                    codes[c.post("/eczema/segment", files={"image": ("i", image)}).status_code] += 1
                    codes[c.post("/generate", json={"kind": "hand"}).status_code] += 1

        clients = [threading.Thread(target=call) for _ in range(3)]
        for t in clients:
            t.start()
        try:
            time.sleep(0.5)
            _edit_manifest(folder, version="2")
            s.proc.send_signal(signal.SIGHUP)
            t0 = time.monotonic()
            while s.text().count("reloaded in") < int(workers):
                assert time.monotonic() - t0 < 60, s.text()
                time.sleep(0.05)
            time.sleep(0.5)  # calls on the new models too
            for _ in range(8):  # whichever worker answers
                assert _versions(s.url)["fixture-segment"] == "2"

            _edit_manifest(folder, sha256="0" * 64)  # a folder that cannot serve
            s.proc.send_signal(signal.SIGHUP)
            while s.text().count("reload refused") < int(workers):
                assert time.monotonic() - t0 < 60, s.text()
                time.sleep(0.05)
            assert "fixture-segment.onnx: sha256 mismatch" in s.text()
            assert _versions(s.url)["fixture-segment"] == "2"  # the models loaded before serve on
        finally:
            stop.set()
            for t in clients:
                t.join()
        assert s.proc.poll() is None, "SIGHUP must not end the server"
        assert set(codes) == {200} and codes[200] > 20, codes
        metrics = httpx.get(s.url + "/metrics").text
        assert f'dermagan_model_reloads_total{{result="ok"}} {float(workers)}' in metrics
        assert 'dermagan_model_info{model="fixture-segment",provider="CPUExecutionProvider",version="2"} 1.0' in metrics
