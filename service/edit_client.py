"""`dermagan edit --url`: the folder's images edited by a running service, over HTTP (httpx).

Each image (and its mask) is POSTed to /eczema/TASK with the run's form fields, `--concurrency` at a
time, with DERMAGAN_API_KEY when the service needs one. A 503 (full, draining), 504 or 408 (a stalled
upload) is retried after its Retry-After and a lost connection after a pause, up to `--tries` -- but not a
503 `model_unavailable` (the service has no model for the task: retrying cannot help); an `empty_mask`
refusal is an image left alone, any other refusal the service's message. The results are the service's answers.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from dermagan.service import imaging
from dermagan.service.edit import PROG, REMOTE_DEFAULTS, Item, fail, recipe_of
from dermagan.service.errors import EmptyMask, ModelUnavailable

#: refusals that retrying cannot turn into an answer, though their status is one that is retried
NOT_RETRIED = (ModelUnavailable.code,)


def cleartext_warning(url: str, with_key: bool) -> str | None:
    """What crosses the network unencrypted when images go to `url`: None over https or to this machine."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    if parts.scheme != "http" or local:
        return None
    what = "the images and the API key go" if with_key else "the images go"
    return (f"{what} to {host} unencrypted (http://); beyond this machine use https:// (a TLS proxy in front "
            "of the service, or its own DERMAGAN_TLS_CERTFILE / DERMAGAN_TLS_KEYFILE)")


class RemoteEditor:
    """One group of images -> per image, the running service's answer(s), or its message refusing it."""

    def __init__(self, args: argparse.Namespace, task: str) -> None:
        try:
            import httpx
        except ImportError:
            fail("--url needs httpx: pip install 'dermagan[client]' (or httpx)")
        # edit's option check refused values below 1; not given: REMOTE_DEFAULTS
        self.concurrency, self.tries = (REMOTE_DEFAULTS[n] if getattr(args, n) is None else getattr(args, n)
                                        for n in ("concurrency", "tries"))
        self.args, self.task, self.httpx = args, task, httpx
        self.url = args.url.rstrip("/")
        scheme = self.url.split("://", 1)[0].lower() if "://" in self.url else ""
        if scheme not in ("http", "https"):
            fail(f"--url {args.url!r}: give the service's base URL with its scheme, e.g. http://{self.url.split('://')[-1]}")
        key = os.environ.get("DERMAGAN_API_KEY")
        warning = cleartext_warning(self.url, key is not None)
        if warning:
            print(f"{PROG}: warning: {warning}", file=sys.stderr)
        self.client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(600, connect=10),
                                   headers={"X-API-Key": key} if key else {},
                                   limits=httpx.Limits(max_connections=self.concurrency))
        model = self._model(task)
        self.recipe = recipe_of(args, None, task, model, tuple(model["resolution"]))
        self.sha256: str = model["sha256"]
        self.who = f"{model['name']} at {self.url} ({model['provider']})"
        self.threads, self.group = self.concurrency, 4 * self.concurrency
        self.budget = 0  # the service holds the images, within its own image budget
        self.retries = 0
        self._count = threading.Lock()
        fields = {"format": args.format, "quality": args.quality, "work_px": args.work_px, "model": args.model,
                  "output": args.output if task == "segment" else None}
        self.fields = {k: str(v) for k, v in fields.items() if v is not None and not (k == "format" and v == "png")}
        self.path = "/eczema/" + args.task

    def weight(self, item: Item) -> int:
        return 0  # (no budget: never asked)

    def _model(self, task: str) -> dict[str, Any]:
        """The service's model for `task` (--model, or the one it serves unnamed), from GET /v1/models."""
        try:
            r = self.client.get("/v1/models")
        except self.httpx.HTTPError as e:
            fail(f"--url {self.url}: no answer ({type(e).__name__}: {e})")
        if r.status_code == 401:  # its message tells an HTTP client which header to send; this one reads a variable
            given = "the key in DERMAGAN_API_KEY was refused" if os.environ.get("DERMAGAN_API_KEY") else \
                "no key was sent: set DERMAGAN_API_KEY to one of the service's keys"
            fail(f"--url {self.url}: the service needs an API key and {given} (GET /v1/models answered 401)")
        if r.status_code != 200:
            fail(f"--url {self.url}: GET /v1/models answered {r.status_code} {_detail(r)}")
        models = r.json()
        fitting = [m for m in models if m["task"] == task]
        named = next((m for m in fitting if m["name"] == self.args.model), None) if self.args.model else \
            next((m for m in fitting if task in m.get("default", [])), None)
        if named is None:
            fail(f"--url {self.url} serves no {task} model{f' named {self.args.model!r}' if self.args.model else ''} "
                  f"(its {task} models: {[m['name'] for m in fitting] or 'none'})")
        if self.args.work_px is not None and self.args.work_px < min(named["resolution"]):
            fail(f"--work-px must be at least {min(named['resolution'])} (this model's resolution), got "
                  f"{self.args.work_px}")
        return named

    def __call__(self, group: list[Item], pool: ThreadPoolExecutor) -> list[tuple[bytes, ...] | str | EmptyMask]:
        return list(pool.map(self._one, group))

    def _one(self, item: Item) -> tuple[bytes, ...] | str | EmptyMask:
        try:
            files = {"image": (item.image.name, item.image.read_bytes())}
            if item.mask is not None:
                files["mask"] = (item.mask.name, item.mask.read_bytes())
        except OSError as e:
            return f"cannot read {e.filename or 'the file'}: {e.strerror or e}"
        last = ""
        for attempt in range(self.tries):
            if attempt:
                with self._count:
                    self.retries += 1
            try:
                r = self.client.post(self.path, files=files, data=self.fields)
            except self.httpx.TransportError as e:  # a lost connection, a restarting replica
                last = f"{type(e).__name__}: {e}"
                time.sleep(min(2.0 ** attempt, 30.0))
                continue
            if r.status_code == 200:
                made_by = r.headers.get("x-dermagan-model-sha256", self.sha256)
                if made_by != self.sha256:  # a reload, or a rollout behind a balancer: one folder, one model
                    return (f"made by another model than this run's (sha256 {made_by[:12]}..., not "
                            f"{self.sha256[:12]}...): the service's {self.recipe['model']['name']} changed during "
                            "the run; not kept -- finish with a new --out, whose provenance names the new model")
                if self.args.layout != "paper":
                    return (r.content,)
                return r.content, _mask_png(files["image"][1], files["mask"][1])
            body = _body(r)
            if r.status_code in (408, 503, 504) and body.get("error") not in NOT_RETRIED:  # 408: a stalled upload
                last = f"{r.status_code} {_detail(r)}"
                time.sleep(float(r.headers.get("retry-after", "1") or 1))
                continue
            if body.get("error") == "empty_mask":
                return EmptyMask(body.get("detail", "mask is empty"))
            return f"the service answered {r.status_code} {_detail(r)}"
        return f"gave up after {self.tries} tries (last: {last})"


def _body(r: Any) -> dict[str, Any]:
    """The service's JSON error body; {} for anything else (a proxy's page, say)."""
    if not r.headers.get("content-type", "").startswith("application/json"):
        return {}
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _detail(r: Any) -> str:
    body = _body(r)
    return f"{body.get('error', '')}: {body.get('detail', '')}" if body else r.text[:200]


def _mask_png(image: bytes, mask: bytes) -> bytes:
    """The mask as the service read it (at the image's size, turned as its EXIF says), 0 / 255 PNG."""
    decoded = imaging.decode_image(image, max_pixels=2**31)
    return imaging.encode_mask_png(imaging.decode_mask(mask, size=decoded.size, max_pixels=2**31,
                                                       image_turned=decoded.turned))
