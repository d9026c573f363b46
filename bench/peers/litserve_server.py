"""Peer 1: LitServe with batching on (`max_batch_size`, `batch_timeout`).

LitServe's own request path: the API-server process reads the multipart form and hands it to one
inference-worker process (spawned) over its queue; there `decode_request` (decode + pre-process),
`batch`, `predict` (one `session.run` per batch), `unbatch` and `encode_response` (post-process +
PNG) run in turn. Same model, session options and imaging code as dermagan
(bench/peers/masked_edit.py). One API server, one worker.

    python bench/peers/litserve_server.py --models-dir DIR --port 8102 --threads 2 --max-batch 8 --batch-timeout-ms 2
"""


# No `from __future__ import annotations`: LitServe reads decode_request's annotation at run time
# (a real `Request` class makes it parse the form in the API server).
import argparse
import multiprocessing as mp
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import Request
from fastapi.responses import Response

import masked_edit


class MaskedEditAPI(ls.LitAPI):
    def __init__(self, models_dir: Path, threads: int, counters: Any, **kw: Any) -> None:
        super().__init__(api_path="/eczema/add", **kw)
        self.models_dir = models_dir
        self.threads = threads
        self.counters = counters  # mp.Array('d', [rows, batches]), shared with the API server

    def setup(self, device: str) -> None:
        self.engine = masked_edit.load_add_model(self.models_dir, self.threads, self.max_batch_size)

    def decode_request(self, request: Request) -> Any:
        return masked_edit.plan(self.engine, request["image"].file.read(), request["mask"].file.read())

    def batch(self, inputs: list[Any]) -> Any:
        return inputs

    def predict(self, edits: list[Any]) -> list[Any]:
        out = self.engine.run(masked_edit.stack(edits))["image"]
        with self.counters.get_lock():
            self.counters[0] += len(edits)
            self.counters[1] += 1
        return list(zip(edits, out))

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, output: Any) -> Response:
        edit, row = output
        return Response(masked_edit.finish(edit, row), media_type="image/png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models-dir", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = cores)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--batch-timeout-ms", type=float, default=2.0)
    a = p.parse_args()
    counters = mp.get_context("spawn").Array("d", [0.0, 0.0])  # the worker is spawned
    api = MaskedEditAPI(a.models_dir, a.threads, counters, max_batch_size=a.max_batch,
                        batch_timeout=a.batch_timeout_ms / 1000)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, healthcheck_path="/readyz")

    @server.app.get("/metrics")
    def metrics() -> Response:
        return Response(masked_edit.metrics_text(int(counters[0]), int(counters[1])), media_type="text/plain")

    server.run(host="127.0.0.1", port=a.port, num_api_servers=1, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
