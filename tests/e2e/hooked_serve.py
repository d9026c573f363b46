"""`dermagan serve` with hooks for tests of its process model (tests/e2e/test_worker_lifecycle.py).

Run as a script (`python hooked_serve.py serve ...`): multiprocessing's spawn imports the supervisor's main script in
each worker too (as `__mp_main__`), so the hooks reach the workers, whose start they slow or break:
- HOOK_SLOW_WARM_S: every model's warm-up (first start and reload) takes that many seconds more;
- HOOK_SLOW_LOAD_S: opening the models (first start and reload) takes that many seconds more;
- HOOK_CRASH_FILE: a worker exits with status 1 as it starts while that file exists.
"""

from __future__ import annotations

import os
import sys
import time

if __name__ != "__main__" and os.path.exists(os.environ.get("HOOK_CRASH_FILE") or "/nonexistent"):
    os._exit(1)

_warm_s = float(os.environ.get("HOOK_SLOW_WARM_S", "0"))
_load_s = float(os.environ.get("HOOK_SLOW_LOAD_S", "0"))
if _warm_s or _load_s:
    from dermagan.service.engine import Engine
    from dermagan.service.runtime import ModelRuntime

    _warm, _open = Engine.warm, ModelRuntime._open_engines

    def _slow_warm(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(_warm_s)
        return _warm(self, *args, **kwargs)

    def _slow_open(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(_load_s)
        return _open(self, *args, **kwargs)

    Engine.warm, ModelRuntime._open_engines = _slow_warm, _slow_open  # type: ignore[method-assign]

if __name__ == "__main__":
    from dermagan.cli import main

    sys.exit(main(sys.argv[1:]))
