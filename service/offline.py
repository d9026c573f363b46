"""What the offline commands (`dermagan sample`, `dermagan edit`) share: the service's settings and
models without a server, and files written whole.

They read the same DERMAGAN_* settings and manifest as `dermagan serve`, open the same ONNX Runtime
sessions (`Engine`), and run the same `pipeline` functions, so what they write is what the service
answers for the same input.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from dermagan.manifest import Manifest, ManifestError, ModelEntry, load_manifest
from dermagan.service.engine import Engine, EngineError
from dermagan.service.settings import Settings, SettingsError, models_dir_hint

#: Rows per ONNX Runtime run: the service's default largest batch (its outputs are tested batch-invariant).
BATCH = 8


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models-dir", type=Path, default=None,
                   help="manifest.json and the ONNX files (default: DERMAGAN_MODELS_DIR, else the shipped models/)")
    p.add_argument("--providers", default=None,
                   help="ONNX Runtime providers, comma-separated (default: DERMAGAN_PROVIDERS, CUDA then CPU)")


def settings_and_manifest(args: argparse.Namespace, prog: str) -> tuple[Settings, Manifest]:
    """The service's settings (DERMAGAN_*, with --models-dir / --providers) and its verified manifest;
    SystemExit naming the problem otherwise."""
    overrides: dict[str, object] = {}
    if args.models_dir is not None:
        overrides["models_dir"] = args.models_dir
    if args.providers is not None:
        overrides["providers"] = tuple(p.strip() for p in args.providers.split(",") if p.strip())
    try:
        settings = Settings.from_env(**overrides)
        return settings, load_manifest(settings.models_dir, verify=True)
    except (ManifestError, SettingsError) as e:
        raise SystemExit(f"{prog}: error: {e}{models_dir_hint(args.models_dir is not None)}") from None


def open_engine(entry: ModelEntry, settings: Settings, prog: str) -> Engine:
    try:
        return Engine(entry, settings.models_dir / entry.file, providers=settings.providers,
                      intra_op_threads=settings.intra_op_threads, buckets=tuple(range(1, BATCH + 1)))
    except EngineError as e:
        raise SystemExit(f"{prog}: error: {e}") from None


class Progress:
    """Progress of a long offline run on stderr: a line rewritten in place on a terminal, else one line
    every `every_s` (a log file or CI output stays readable)."""

    def __init__(self, what: str, total: int, *, every_s: float = 30.0, stream: TextIO | None = None) -> None:
        self.what, self.total, self.every_s = what, total, every_s
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = self._last = time.monotonic()
        self.done = 0

    def update(self, n: int, note: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if self.total and (now - self._last >= (0.5 if self.tty else self.every_s) or self.done >= self.total):
            self._last = now
            rate = self.done / max(now - self.t0, 1e-9)
            line = f"{self.what}: {self.done}/{self.total} ({rate:.1f}/s{', ' + note if note else ''})"
            print(("\r" + line) if self.tty else line, end="\n" if not self.tty or self.done >= self.total else "",
                  file=self.stream, flush=True)


def duration(seconds: float) -> str:
    """A run's time for its summary line: "12.3 s", or "40 ms" under a second (not "0.0 s")."""
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


def write_whole(path: Path, data: bytes) -> None:
    """Write `data` to `path` under a temporary name, then rename: an interrupted run leaves no half file
    (the `.part` is hidden, and the next run overwrites it)."""
    tmp = path.with_name(f".{path.name}.part")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:  # a failed write (a full disk) leaves no partial file behind
        tmp.unlink(missing_ok=True)
