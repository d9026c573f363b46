"""`dermagan serve`: serve the models of a folder over HTTP (uvicorn, one process).

Defaults: the repository's `models/` (or DERMAGAN_MODELS_DIR), host 0.0.0.0 (the service runs in
containers, where loopback is unreachable from outside; pass --host 127.0.0.1 on a shared machine),
port 8000. Every other knob is a DERMAGAN_* environment variable (see settings.py).
Exit status: 0 after a clean shutdown, 2 when the models cannot be served (the message names the file).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", help="folder with manifest.json and the ONNX files "
                        "(default: DERMAGAN_MODELS_DIR, else the repository's models/)")
    parser.add_argument("--host", help="address to listen on (default: DERMAGAN_HOST, else 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port (default: DERMAGAN_PORT, else 8000)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default: info")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from dermagan.manifest import ManifestError, load_manifest
    from dermagan.service.app import create_app
    from dermagan.service.settings import Settings, SettingsError

    overrides: dict[str, Any] = {k: v for k, v in (("models_dir", args.models_dir), ("host", args.host),
                                                   ("port", args.port), ("log_level", args.log_level)) if v is not None}
    try:
        settings = Settings.from_env(**overrides)
        load_manifest(settings.models_dir, verify=True)  # refuse early, with a one-line message
    except (SettingsError, ManifestError) as e:
        print(f"dermagan serve: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
                            log_level=settings.log_level, # uvicorn's own limit comes after ours: by then every request has had its 503
                            timeout_graceful_shutdown=int(settings.drain_timeout_s) + 2,
                            server_header=False)
    app = config.app
    runtime = app.state.runtime

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            runtime.begin_drain()  # our drain clock starts with uvicorn's
            super().handle_exit(sig, frame)

    server = Server(config)
    server.run()
    return 0 if server.started else 2
