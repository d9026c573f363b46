"""ONNX Runtime on a GPU: what the CUDA provider gives each shipped model, and what fp16 and IO binding add.

For every model of a models folder (manifest + ONNX), one table row per batch size:

- `cpu`: the service's own Engine on the CPU provider (all cores), images/s;
- `cuda`: the service's Engine on the CUDA provider (NumPy in, NumPy out: what the service does today);
- `cuda bound`: the same session with IO binding, inputs already on the GPU and outputs left there
  (the inference alone, without the host<->device copies the service pays);
- `cuda nhwc`: a session with the CUDA provider's `prefer_nhwc` (channels-last convolutions);
- `cuda fp16`: the model converted to float16 inside (`onnxruntime.transformers.float16`, inputs
  and outputs kept float32, so the service's contract holds), NumPy in and out.

Parity, on the same random inputs at the largest batch: max |cuda - cpu| and max |fp16 - fp32| (the
outputs are images in [-1, 1] or logits), and the PSNR of fp16 against fp32 on images.

    python bench/bench_gpu.py --models-dir models --out bench/results/gpu-DATE.md

It needs onnxruntime-gpu (and `onnx` for the fp16 conversion); without a usable CUDA provider it says
so and exits 2. `--provider CPUExecutionProvider` runs every column on the CPU instead (no NHWC
column): what the test suite does, so that the script still works when a GPU is next at hand.
Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # noqa: E402  (bench/load.py: gpu_name, publish)

from dermagan.manifest import load_manifest
from dermagan.service.engine import Engine

CUDA = "CUDAExecutionProvider"


def machine() -> str:
    import onnxruntime as ort

    cpu = platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"GPU {load.gpu_name() or 'none (no nvidia-smi)'}; CPU {cpu}, {os.cpu_count()} logical cores; Python {platform.python_version()}, "
            f"onnxruntime {ort.__version__} (providers {', '.join(ort.get_available_providers())})")


def random_feeds(engine: Engine, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = engine.example_inputs(batch)
    for k, v in feeds.items():
        if v.dtype == np.float32:
            feeds[k] = rng.uniform(-1, 1, v.shape).astype(np.float32)
        elif v.dtype == np.int64 and engine.entry.labels:
            feeds[k] = rng.integers(0, len(engine.entry.labels), v.shape).astype(np.int64)
    return feeds


def session(path: Path, provider: str, provider_options: dict[str, str] | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=[(provider, provider_options or {})])


def fp16_file(path: Path, out_dir: Path) -> Path:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    out = out_dir / (path.stem + ".fp16.onnx")
    onnx.save(model, str(out))
    return out


def bound_runner(sess, feeds: dict[str, np.ndarray], device: str = "cuda"):
    """A call that runs `sess` with inputs already on the device (the GPU) and outputs left there."""
    import onnxruntime as ort

    binding = sess.io_binding()
    keep = []
    for name, arr in feeds.items():
        value = ort.OrtValue.ortvalue_from_numpy(arr, device, 0)
        keep.append(value)
        binding.bind_ortvalue_input(name, value)
    for out in sess.get_outputs():
        binding.bind_output(out.name, device, 0)

    def run() -> None:
        sess.run_with_iobinding(binding)

    run.keep = keep  # type: ignore[attr-defined]  # the inputs live as long as the runner
    return run


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(4.0 / mse)  # peak-to-peak 2 ([-1, 1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models-dir", type=Path, default=Path(__file__).resolve().parents[1] / "models")
    ap.add_argument("--models", nargs="*", help="model names (default: all in the manifest)")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--cpu-batches", default="1,8", help="batch sizes also timed on the CPU provider")
    ap.add_argument("--min-s", type=float, default=0.5, help="seconds of timed calls per cell")
    ap.add_argument("--provider", default=CUDA, help="the accelerated provider (default CUDA; CPUExecutionProvider: a dry run)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    import onnxruntime as ort

    if args.provider not in ort.get_available_providers():
        print(f"bench_gpu: this onnxruntime ({ort.__version__}) has no {args.provider} "
              f"({ort.get_available_providers()}); install onnxruntime-gpu", file=sys.stderr)
        return 2
    on_gpu = args.provider == CUDA
    device = "cuda" if on_gpu else "cpu"
    manifest = load_manifest(args.models_dir)
    names = args.models or [m.name for m in manifest.models]
    batches = [int(b) for b in args.batches.split(",")]
    cpu_batches = {int(b) for b in args.cpu_batches.split(",") if b}
    rng = np.random.default_rng(0)
    lines = [f"# ONNX Runtime on the GPU ({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
             f"Machine: {machine()}.", f"Models: {args.models_dir}.", f"Accelerated provider: {args.provider}.", "",
             "Images/s (median call time, inputs random in [-1, 1]); `cuda`: NumPy in and out, as the service runs it; "
             "`bound`: IO binding, data already on the GPU (inference alone); `nhwc`: prefer_nhwc; "
             "`fp16`: float16 inside, float32 at the edges.", "",
             "| model | batch | cpu | cuda | cuda bound | cuda nhwc | cuda fp16 | fp16 / cuda |",
             "|---|---|---|---|---|---|---|---|"]
    parity = ["", "## Parity at the largest batch", "",
              "| model | max abs cuda - cpu | max abs fp16 - fp32 (cuda) | PSNR fp16 vs fp32 | provider the service's Engine got |",
              "|---|---|---|---|---|"]
    notes: list[str] = []
    print("\n".join(lines), file=sys.stderr, flush=True)  # progress; the whole report is printed at the end
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            entry = manifest.get(name)
            path = args.models_dir / entry.file
            t0 = time.perf_counter()
            cpu = Engine(entry, path, providers=("CPUExecutionProvider",), buckets=tuple(batches))
            gpu = Engine(entry, path, providers=(args.provider,), buckets=tuple(batches))
            nhwc = session(path, args.provider, {"prefer_nhwc": "1"}) if on_gpu else None
            try:
                half = session(fp16_file(path, Path(tmp)), args.provider)
            except Exception as e:  # a graph the converter cannot handle: say so, keep going
                half = None
                notes.append(f"- {name}: fp16 conversion or load failed: {type(e).__name__}: {e}")
            print(f"{name}: sessions in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
            out_names = [o.name for o in gpu.session.get_outputs()]
            for b in batches:
                feeds = random_feeds(gpu, b, rng)
                r_cpu = b / load.timed(lambda: cpu.session.run(out_names, feeds), min_s=args.min_s, min_n=5) if b in cpu_batches else None
                r_gpu = b / load.timed(lambda: gpu.session.run(out_names, feeds), min_s=args.min_s, min_n=5)
                r_bound = b / load.timed(bound_runner(gpu.session, feeds, device), min_s=args.min_s, min_n=5)
                r_nhwc = b / load.timed(lambda: nhwc.run(out_names, feeds), min_s=args.min_s, min_n=5) if nhwc else None
                r_half = b / load.timed(lambda: half.run(out_names, feeds), min_s=args.min_s, min_n=5) if half else None
                row = (f"| {name} | {b} | {f'{r_cpu:.0f}' if r_cpu else '-'} | {r_gpu:.0f} | {r_bound:.0f} | {f'{r_nhwc:.0f}' if r_nhwc else '-'} | "
                       f"{f'{r_half:.0f}' if r_half else '-'} | {f'{r_half / r_gpu:.2f}x' if r_half else '-'} |")
                lines.append(row)
                print(row, file=sys.stderr, flush=True)
            feeds = random_feeds(gpu, batches[-1], rng)
            y_cpu = cpu.session.run(out_names, feeds)
            y_gpu = gpu.session.run(out_names, feeds)
            d_cpu = max(float(np.abs(a - c).max()) for a, c in zip(y_gpu, y_cpu))
            if half:
                y_half = half.run(out_names, feeds)
                d_half = max(float(np.abs(a - h).max()) for a, h in zip(y_gpu, y_half))
                p_half = (f"{min(psnr(a, h) for a, h in zip(y_gpu, y_half)):.1f} dB"
                          if entry.task != "segment" else "(logits)")
            parity.append(f"| {name} | {d_cpu:.2e} | {f'{d_half:.2e}' if half else '-'} | {p_half if half else '-'} | "
                          f"{gpu.provider} |")
    load.publish("\n".join(lines + parity + ([""] + notes if notes else [])) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
