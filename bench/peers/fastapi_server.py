"""Peer 2: a plain FastAPI endpoint, as a user would write it without a batcher.

A sync `def` endpoint (FastAPI runs it in its threadpool): decode and pre-process, `session.run`
for this one request, post-process, PNG. Same model, session options and imaging code as dermagan
(bench/peers/masked_edit.py). One uvicorn process.

    python bench/peers/fastapi_server.py --models-dir DIR --port 8101 --threads 2
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import FastAPI, File, UploadFile
from fastapi.responses import Response

import masked_edit


def create_app(models_dir: Path, threads: int) -> FastAPI:
    engine = masked_edit.load_add_model(models_dir, threads, max_batch=1)
    counts = {"rows": 0, "batches": 0}
    lock = threading.Lock()
    app = FastAPI(title="plain FastAPI peer")

    @app.post("/eczema/add")
    def add(image: Annotated[UploadFile, File()], mask: Annotated[UploadFile, File()]) -> Response:
        edit = masked_edit.plan(engine, image.file.read(), mask.file.read())
        out = engine.run(edit.inputs)
        with lock:
            counts["rows"] += 1
            counts["batches"] += 1
        return Response(masked_edit.finish(edit, out["image"][0]), media_type="image/png")

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(masked_edit.metrics_text(counts["rows"], counts["batches"]), media_type="text/plain")

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models-dir", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = cores)")
    a = p.parse_args()
    uvicorn.run(create_app(a.models_dir, a.threads), host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
