"""service/engine.py on the fixture ONNX models: contract checks, buckets, provider read-back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixture_models import build_models

from dermagan.manifest import TensorSpec
from dermagan.service.engine import Engine, EngineError

CPU = ("CPUExecutionProvider",)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("models")
    return folder, {e.task: e for e in build_models(folder, only=("generate", "add", "segment"))}


def test_runs_pads_to_buckets_and_reports_provider(built) -> None:
    folder, entries = built
    eng = Engine(entries["add"], folder / entries["add"].file, providers=("CUDAExecutionProvider", *CPU),
                 intra_op_threads=1, buckets=(1, 4))
    assert eng.provider == "CPUExecutionProvider"  # CUDA asked for, CPU read back
    feeds = eng.example_inputs(3)
    assert feeds["image"].shape == (3, 3, 64, 64) and feeds["mask"].shape == (3, 1, 64, 64)
    feeds["image"] = np.random.default_rng(0).uniform(-1, 1, feeds["image"].shape).astype(np.float32)
    out = eng.run(feeds)["image"]  # padded to 4, cut back to 3
    assert out.shape == (3, 3, 64, 64)
    alone = eng.run({k: v[1:2] for k, v in feeds.items()})["image"]
    assert np.array_equal(alone[0], out[1])
    eng.warm()


def test_generate_inputs(built) -> None:
    folder, entries = built
    eng = Engine(entries["generate"], folder / entries["generate"].file, providers=CPU, buckets=(2,))
    feeds = eng.example_inputs(2)
    assert feeds["z"].shape == (2, 16) and feeds["label"].dtype == np.int64
    assert eng.run(feeds)["image"].shape == (2, 3, 32, 32)


def test_contract_mismatches_refuse(built) -> None:
    folder, entries = built
    seg = entries["segment"]
    wrong_dtype = seg.model_copy(update={"inputs": {"image": TensorSpec(dtype="float16", shape=["N", 3, "H", "W"])}})
    with pytest.raises(EngineError, match="fixture-segment.onnx.*tensor\\(float\\)"):
        Engine(wrong_dtype, folder / seg.file, providers=CPU)
    wrong_name = seg.model_copy(update={"name": "other"})
    with pytest.raises(EngineError, match="metadata names model 'fixture-segment'"):
        Engine(wrong_name, folder / seg.file, providers=CPU)
    wrong_file = entries["add"].model_copy(update={"file": seg.file})
    with pytest.raises(EngineError, match="metadata"):
        Engine(wrong_file, folder / seg.file, providers=CPU)
    with pytest.raises(EngineError, match="none of the providers"):
        Engine(seg, folder / seg.file, providers=("NoSuchExecutionProvider",))


def test_cuda_libraries_are_preloaded_once_and_what_onnxruntime_prints_is_logged(monkeypatch, caplog, capsys) -> None:
    """`pip install dermagan[serve-gpu]` puts CUDA/cuDNN in site-packages, where only
    onnxruntime.preload_dlls() finds them; what it prints goes to the log, never to stdout."""
    import onnxruntime as ort

    from dermagan.service import engine

    calls = []

    def preload() -> None:
        calls.append(1)
        print("Failed to load libcublasLt.so.13: cannot open shared object file")

    monkeypatch.setattr(ort, "preload_dlls", preload, raising=False)
    engine.preload_cuda_libraries.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="dermagan.service"):
            said = engine.preload_cuda_libraries()
            engine.preload_cuda_libraries()
        assert calls == [1] and "libcublasLt.so.13" in said
        assert capsys.readouterr().out == ""
        assert [r.getMessage() for r in caplog.records] == [f"loading the CUDA libraries: {said}"]
    finally:
        engine.preload_cuda_libraries.cache_clear()


def test_no_preload_without_a_cuda_provider(built, monkeypatch) -> None:
    import onnxruntime as ort

    from dermagan.service import engine

    monkeypatch.setattr(ort, "preload_dlls", lambda: pytest.fail("preloaded for a CPU-only session"), raising=False)
    engine.preload_cuda_libraries.cache_clear()
    folder, entries = built
    Engine(entries["segment"], folder / entries["segment"].file, providers=("CUDAExecutionProvider", *CPU))
    Engine(entries["segment"], folder / entries["segment"].file, providers=CPU)
    engine.preload_cuda_libraries.cache_clear()


def test_a_provider_this_onnx_runtime_lacks_is_said_once(built, monkeypatch, caplog) -> None:
    """The default CUDA,CPU list on the CPU package starts on the CPU, and the log says why, once per process."""
    import logging

    from dermagan.service import engine

    monkeypatch.setattr(engine, "_SKIPPED_SAID", set())
    folder, entries = built
    with caplog.at_level(logging.INFO, logger=engine.log.name):
        for task in ("segment", "add"):
            Engine(entries[task], folder / entries[task].file, providers=("CUDAExecutionProvider", *CPU))
    said = [r.getMessage() for r in caplog.records if "is not in this ONNX Runtime" in r.getMessage()]
    assert len(said) == 1, said
    assert said[0].startswith("CUDAExecutionProvider is not in this ONNX Runtime (") and "run on CPUExecutionProvider" in said[0]
    assert "onnxruntime-gpu" in said[0]
