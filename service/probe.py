"""`dermagan probe`: is the `dermagan serve` on this machine (or in this container) ready?

For a container's HEALTHCHECK (Dockerfile, docker-compose.yml) and anything else that probes from the
inside: GET /readyz (every model loaded and warmed; 503 while warming or draining), or /healthz with
`--live`, on the port the service listens on, over HTTPS when DERMAGAN_TLS_CERTFILE is set. Exit 0 when
the answer is 200, else 1 with one line on stderr saying what it got.

It reads the three settings it needs (DERMAGAN_HOST, DERMAGAN_PORT, DERMAGAN_TLS_CERTFILE) straight from
the environment, with Settings' defaults: importing the Settings model costs ~0.2 s of CPU, and a probe
runs every few seconds for the life of the container. The certificate is not verified: the server is
this machine's own, reached over loopback, where its name would not match anyway.
"""

from __future__ import annotations

import argparse
import http.client
import os
import ssl
import sys

PATHS = {False: "/readyz", True: "/healthz"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--live", action="store_true",
                        help="ask /healthz (the process answers) instead of /readyz (every model loaded and warmed)")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds (default: 4)")
    parser.add_argument("--port", type=int, default=None,
                        help="the service's port (default: DERMAGAN_PORT, else 8000); a container started with "
                             "`serve --port N` is probed by its HEALTHCHECK on DERMAGAN_PORT: set that instead")
    parser.add_argument("--host", default=None, help="the service's address (default: DERMAGAN_HOST, else loopback)")


def target(host: str | None = None, port: int | None = None) -> tuple[str, str, int]:
    """(scheme, host, port) of the local service: `host` / `port` where given (--host, --port), else from its
    DERMAGAN_* variables."""
    host = (os.environ.get("DERMAGAN_HOST", "") if host is None else host).strip()
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    port = int(os.environ.get("DERMAGAN_PORT", "").strip() or 8000) if port is None else port
    scheme = "https" if os.environ.get("DERMAGAN_TLS_CERTFILE", "").strip() else "http"
    return scheme, host, port


def run(args: argparse.Namespace) -> int:
    path = PATHS[args.live]
    try:
        scheme, host, port = target(args.host, args.port)
    except ValueError:
        print(f"dermagan probe: DERMAGAN_PORT is not a port number: {os.environ['DERMAGAN_PORT']!r}", file=sys.stderr)
        return 1
    where = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}{path}"
    if scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=args.timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        status, body = answer.status, answer.read(300)
    except (OSError, http.client.HTTPException) as e:
        print(f"dermagan probe: {where}: {e}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    if status != 200:
        print(f"dermagan probe: {where}: {status} {body.decode('utf-8', 'replace')}", file=sys.stderr)
        return 1
    return 0
