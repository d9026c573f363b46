"""The seam between training/ and service/ (STYLE.md point 2).

Every model that `dermagan export` writes is loaded through the service's own code -- the
manifest check and ONNX Runtime sessions of `ModelRuntime`, its micro-batcher, the numpy pre- and
post-processing of `service/imaging.py` and `service/pipeline.py` -- and must give what the
PyTorch module gives for the same uint8 image with the training side's pre-processing
(`dermagan.training.data.to_image_tensor` / `to_mask_tensor`). The two pre-processings live twice
(numpy, torch); this test keeps them equal.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from dermagan.manifest import load_manifest
from dermagan.service import imaging, pipeline
from dermagan.service.metrics import Metrics
from dermagan.service.runtime import ModelRuntime
from dermagan.service.settings import Settings
from dermagan.training.data import to_image_tensor, to_mask_tensor

ATOL = 1e-4  # float outputs; the uint8 images may differ by one level where a value sits on .5


def _uint8_image(h: int, w: int, seed: int) -> np.ndarray:
    """A skin-ish uint8 RGB image with texture (not flat: every pixel value range is exercised)."""
    rng = np.random.default_rng(seed)
    base = np.array([200, 150, 120]) + rng.integers(-40, 40, 3)
    noise = rng.normal(0, 25, (h, w, 3)) + np.linspace(-30, 30, w)[None, :, None]
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _uint8_mask(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.uint8)
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    m[y: y + h // 2, x: x + w // 2] = 255
    return m


def _torch_to_uint8(y: torch.Tensor) -> np.ndarray:
    """The training side's (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
    return ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _service_inputs(task: str, images: list[np.ndarray], masks: list[np.ndarray]) -> dict[str, np.ndarray]:
    feeds = {"image": np.stack([imaging.to_model_input(im) for im in images])}
    if task in ("add", "remove"):
        feeds["mask"] = np.stack([imaging.mask_to_model_input(m > 127) for m in masks])
    return feeds


def _torch_outputs(module: torch.nn.Module, task: str, images: list[np.ndarray], masks: list[np.ndarray]) -> torch.Tensor:
    args = [torch.stack([to_image_tensor(im) for im in images])]
    if task in ("add", "remove"):
        args.append(torch.stack([to_mask_tensor(m) for m in masks]))
    with torch.no_grad():
        return module(*args)


@pytest.fixture(scope="module")
def runtime(shipped):
    """The service's ModelRuntime on the exported folder: manifest check, sessions, batchers, warm-up."""
    models, _ = shipped
    settings = Settings(models_dir=models, providers=("CPUExecutionProvider",), intra_op_threads=1,
                        max_batch=4, max_delay_ms=20.0)
    rt = ModelRuntime(settings, Metrics())
    loop = asyncio.new_event_loop()
    loop.run_until_complete(rt.load())
    loop.run_until_complete(rt.warm())
    assert rt.ready, rt.warm_error
    yield rt, loop
    loop.run_until_complete(rt.shutdown())
    loop.close()


def _infer(rt, loop, engine, requests: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """Submit the requests concurrently (the batcher may merge them) and return each one's output."""
    async def all_():
        return await asyncio.gather(*(rt.infer(engine, r) for r in requests))
    outs = loop.run_until_complete(all_())
    return [next(iter(o.values())) for o in outs]


def test_every_family_was_exported_and_the_service_loads_it(shipped, runtime):
    models, modules = shipped
    rt, _ = runtime
    manifest = load_manifest(models, verify=True)
    assert sorted(m.name for m in manifest.models) == sorted(modules) == sorted(rt.engines)
    assert {m.task for m in manifest.models} == {"generate", "add", "remove", "cycle-add", "cycle-remove", "segment"}


@pytest.mark.parametrize("task", ["add", "cycle-add", "cycle-remove", "segment"])
def test_image_models_match_pytorch_through_the_service(shipped, runtime, task):
    _, modules = shipped
    rt, loop = runtime
    (name,) = [n for n, e in modules.items() if e.task == task]
    engine, module = rt.engines[name], modules[name].module
    h, w = engine.hw
    images = [_uint8_image(h, w, seed) for seed in range(3)]
    masks = [_uint8_mask(h, w, seed) for seed in range(3)]
    # three requests of one row each, submitted together: the batcher merges them
    requests = [_service_inputs(task, [im], [m]) for im, m in zip(images, masks)]
    got = np.concatenate(_infer(rt, loop, engine, requests))
    want = _torch_outputs(module, task, images, masks)
    assert got.shape == tuple(want.shape)
    assert np.abs(got - want.numpy()).max() <= ATOL
    if task == "segment":  # the service thresholds logits at 0
        assert ((got > 0) == (want.numpy() > 0)).mean() > 0.999
    else:  # the service's uint8 post-processing vs the training side's
        service_u8 = np.stack([imaging.from_model_output(x) for x in got])
        assert np.abs(service_u8.astype(int) - _torch_to_uint8(want).astype(int)).max() <= 1


@pytest.mark.parametrize("task", ["add", "cycle-add", "segment"])
def test_dynamic_sizes_match_pytorch_in_the_service_engine(shipped, runtime, task):
    """Images at another multiple of size_multiple than the training resolution (the tiling path)."""
    _, modules = shipped
    rt, _ = runtime
    (name,) = [n for n, e in modules.items() if e.task == task]
    engine, exportable = rt.engines[name], modules[name]
    assert engine.entry.dynamic_hw
    m = engine.entry.size_multiple
    h, w = engine.hw[0] + m, engine.hw[1] + 2 * m
    images, masks = [_uint8_image(h, w, 7), _uint8_image(h, w, 8)], [_uint8_mask(h, w, 7), _uint8_mask(h, w, 8)]
    got = next(iter(engine.run(_service_inputs(task, images, masks)).values()))
    want = _torch_outputs(exportable.module, task, images, masks)
    assert got.shape[2:] == (h, w) and np.abs(got - want.numpy()).max() <= ATOL


@pytest.mark.parametrize("name", ["generate", "lesion-generate"])
def test_generators_match_pytorch_on_the_service_latents(shipped, runtime, name):
    _, modules = shipped
    rt, loop = runtime
    engine, exportable = rt.engines[name], modules[name]
    labels = engine.entry.labels
    label = labels.index("hand") if len(labels) > 1 else None
    seeds = [3, 1, 4]
    feeds = pipeline.generate_inputs(seeds, engine.entry.z_dim, label)
    (got,) = _infer(rt, loop, engine, [feeds])
    args = [torch.from_numpy(feeds["z"])] + ([torch.from_numpy(feeds["label"])] if label is not None else [])
    with torch.no_grad():
        want = exportable.module(*args)
    assert got.shape == tuple(want.shape) == (3, 3, *engine.hw)
    assert np.abs(got - want.numpy()).max() <= ATOL
    pngs = pipeline.finish_generate(got)
    decoded = [imaging.decode_image(p, max_pixels=10**6).rgb for p in pngs]
    assert np.abs(np.stack(decoded).astype(int) - _torch_to_uint8(want).astype(int)).max() <= 1
