"""bench/bench_cpu_split.py's attribution of py-spy stacks to the server's parts."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_cpu_split as split  # noqa: E402

LOOP = "<module> (<string>:1);run (/x/service/cli.py:234);asyncio_run (/v/uvicorn/_compat.py:30);Runner.run (/p/asyncio/runners.py:118)"


def test_stacks_fall_into_the_parts_a_reader_expects(tmp_path: Path) -> None:
    cases = {
        "Thread._bootstrap (t.py:1);MicroBatcher._timed_run (/x/service/batcher.py:205);Engine.run (/x/service/engine.py:158);"
        "Session.run (/v/onnxruntime/capi/onnxruntime_inference_collection.py:406)": "inference",
        "Thread._bootstrap (t.py:1);_worker (/p/concurrent/futures/thread.py:83);_WorkItem.run (/p/concurrent/futures/thread.py:58);"
        "ModelRuntime.run_codec.<locals>.guarded (/x/service/runtime.py:182);encode_png (/x/service/imaging.py:282)": "codec threads",
        LOOP + ";RequestResponseCycle.run_asgi (/v/uvicorn/protocols/http/httptools_impl.py:420);Gate.__call__ (/x/service/app.py:211);"
        "_drain_body (/x/service/app.py:112)": "loop, rejected",
        LOOP + ";RequestResponseCycle.run_asgi (/v/uvicorn/protocols/http/httptools_impl.py:420);Gate.__call__ (/x/service/app.py:224);"
        "Route.handle (/v/starlette/routing.py:289);plan_masked_edit (/x/service/pipeline.py:34)": "loop, served",
        LOOP + ";HttpToolsProtocol.data_received (/v/uvicorn/protocols/http/httptools_impl.py:173)": "loop, HTTP layer",
        LOOP: "loop, I/O in C",
        "Thread._bootstrap (t.py:1);RssWatch.run (/x/other.py:3)": "other",
    }
    for stack, part in cases.items():
        assert split.classify(stack) == part, stack
    raw = tmp_path / "w.txt"
    raw.write_text("".join(f"{stack} {n}\n" for n, stack in enumerate(cases, start=1)))
    parts = split.split([raw])
    assert sum(parts.values()) == sum(range(1, len(cases) + 1)) and parts["loop, I/O in C"] == 6
    assert set(parts) <= set(split.PARTS)


def test_an_early_refusal_counts_as_rejected() -> None:
    stack = (LOOP + ";HttpToolsProtocol.data_received (/v/uvicorn/protocols/http/httptools_impl.py:173);"
             "SheddingHttpToolsProtocol.on_headers_complete (/x/service/shedding.py:60)")
    assert split.classify(stack) == "loop, rejected"


def test_threads_fall_into_roles_by_their_kernel_names() -> None:
    assert split.role_of(100, 100, "python") == "event loop"  # the main thread runs the loop
    assert split.role_of(100, 101, "infer-eczema-ad") == "inference threads"  # infer-eczema-add_0, cut to 15 bytes
    assert split.role_of(100, 102, "codec_1") == "codec threads"
    assert split.role_of(100, 103, "python") == "other threads"  # uvicorn's, ONNX Runtime's, the pong thread


def test_role_cpu_reads_this_process_threads() -> None:
    import os
    import threading
    import time

    from dermagan.service.threadnames import name_os_thread

    burnt, stop = threading.Event(), threading.Event()

    def busy() -> None:  # 0.3 s of CPU under the kernel name "codec_7"
        name_os_thread()
        while time.thread_time() < 0.3:
            pass
        burnt.set()
        stop.wait(10)

    t = threading.Thread(target=busy, name="codec_7")
    t.start()
    assert burnt.wait(30)
    roles = split.role_cpu_s([os.getpid()])
    stop.set()
    t.join()
    assert set(roles) == set(split.ROLES) and roles["codec threads"] >= 0.2, roles
