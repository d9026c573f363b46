"""HTTPS served by `dermagan serve` itself (DERMAGAN_TLS_CERTFILE / _KEYFILE), for real: certificates from
a test CA (trustme), two workers, the edit client and `dermagan probe` over it, plain HTTP at the port answered
400 naming the mistake (nothing else in clear), the drain over TLS, and broken certificate settings refused
before start-up, naming the file."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import serve
from sample_images import encode, gradient, mask_png, multipart_images, rect_mask

trustme = pytest.importorskip("trustme", reason="needs trustme (the test extra)")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    paths = {name: folder / f"{name}.pem" for name in ("ca", "cert", "key", "other_key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    for i, blob in enumerate(server.cert_chain_pems):  # the chain: the server's certificate first
        blob.write_to_path(str(paths["cert"]), append=i > 0)
    server.private_key_pem.write_to_path(str(paths["key"]))
    ca.issue_cert("someone-else").private_key_pem.write_to_path(str(paths["other_key"]))
    return paths


def dermagan(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dermagan.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_https_end_to_end_with_two_workers(models_dir: Path, pki: dict[str, Path], tmp_path: Path) -> None:
    tls = {"DERMAGAN_TLS_CERTFILE": str(pki["cert"]), "DERMAGAN_TLS_KEYFILE": str(pki["key"])}
    with serve(models_dir, **tls, DERMAGAN_WORKERS="2", DERMAGAN_MODELS="fixture-generate,fixture-add") as s:
        assert s.url.startswith("https://")
        trusted = ssl.create_default_context(cafile=str(pki["ca"]))
        with httpx.Client(base_url=s.url, verify=trusted) as c:
            assert c.get("/readyz").status_code == 200
            r = c.post("/generate", json={"kind": "hand", "seed": 3})
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            image, mask = encode(gradient(64, 80)), mask_png(rect_mask(64, 80, (10, 20, 40, 50)))
            assert c.post("/eczema/add", files={"image": ("i", image), "mask": ("m", mask)}).status_code == 200
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the certificate's CA
            httpx.get(s.url + "/readyz")
        # plain HTTP at the HTTPS port: told so (a 400 in clear that holds only that), not served
        told = httpx.get(s.url.replace("https://", "http://") + "/readyz", timeout=5)
        assert told.status_code == 400 and told.headers["connection"] == "close"
        assert "plain HTTP arrived at this HTTPS port: use https://" in told.json()["detail"]
        assert "serving on https://" in s.text()

        port = {"DERMAGAN_PORT": s.url.rsplit(":", 1)[1]}
        probe = dermagan("probe", env={**port, **tls})
        assert probe.returncode == 0, probe.stderr
        plain = dermagan("probe", env={**port, "DERMAGAN_TLS_CERTFILE": ""})  # asks over http: a 400
        assert plain.returncode == 1 and f"http://127.0.0.1:{port['DERMAGAN_PORT']}/readyz" in plain.stderr
        assert "400" in plain.stderr

        folder = tmp_path / "in"
        folder.mkdir()
        (folder / "a.png").write_bytes(image)
        (folder / "a_mask.png").write_bytes(mask)
        edited = dermagan("edit", "add", str(folder), "--masks", str(folder), "--out", str(tmp_path / "out"),
                          "--url", s.url, env={"SSL_CERT_FILE": str(pki["ca"])})  # the client trusts the CA
        assert edited.returncode == 0, edited.stderr
        assert (tmp_path / "out" / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(sys.platform != "linux", reason="TCP_USER_TIMEOUT's zero-window rule is Linux's (5.11 and later)")
def test_over_https_an_answer_nobody_reads_is_dropped_too(models_dir: Path, pki: dict[str, Path]) -> None:
    """Under TLS the unsent answer waits below the TLS layer, where the protocol's own check cannot see it
    (test_resilience.py has that check over plain HTTP); the kernel's TCP_USER_TIMEOUT, set from
    DERMAGAN_SEND_IDLE_S, resets the connection instead, and it is counted and logged the same way."""
    h = w = 2000  # a ~12 MB PNG answer: more than the sockets' buffers hold
    noise = np.random.default_rng(7).integers(0, 256, (h, w, 3), dtype=np.uint8)
    body, ctype = multipart_images(encode(noise), mask_png(rect_mask(h, w, (100, 100, 300, 300))))
    tls = {"DERMAGAN_TLS_CERTFILE": str(pki["cert"]), "DERMAGAN_TLS_KEYFILE": str(pki["key"])}
    with serve(models_dir, **tls, DERMAGAN_MODELS="fixture-add", DERMAGAN_LOG_LEVEL="warning",
               DERMAGAN_SEND_IDLE_S="1") as s:
        trusted = ssl.create_default_context(cafile=str(pki["ca"]))
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(20)
        raw.connect(("127.0.0.1", int(s.url.rsplit(":", 1)[1])))
        with trusted.wrap_socket(raw, server_hostname="127.0.0.1") as stuck:
            stuck.sendall((f"POST /eczema/add HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
                           f"X-Request-ID: never-reads-tls\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
            t0 = time.monotonic()
            while "request_id=never-reads-tls" not in s.text():
                assert time.monotonic() - t0 < 30, s.text()[-2000:]
                time.sleep(0.1)
        assert "took no byte of its answer for 1 s (DERMAGAN_SEND_IDLE_S); the answer dropped" in s.text()
        metrics = httpx.get(s.url + "/metrics", verify=trusted, timeout=10).text
        assert 'dermagan_request_failures_total{model="fixture-add",reason="send_stalled"} 1.0' in metrics



@pytest.mark.parametrize("cert,key,words", [
    ("cert", None, "DERMAGAN_TLS_CERTFILE is set but DERMAGAN_TLS_KEYFILE is not"),
    (None, "key", "DERMAGAN_TLS_KEYFILE is set but DERMAGAN_TLS_CERTFILE is not"),
    ("cert", "missing", "DERMAGAN_TLS_KEYFILE: cannot read"),
    ("cert", "other_key", "the key is not this certificate's key"),
    ("key", "cert", "not a PEM certificate (chain) and a PEM private key"),
])
def test_broken_tls_settings_refuse_to_start_naming_them(pki: dict[str, Path], tmp_path: Path, cert: str | None,
                                                         key: str | None, words: str) -> None:
    def path(name: str | None) -> str:
        return "" if name is None else str(pki.get(name, tmp_path / f"{name}.pem"))

    done = dermagan("serve", "--check", env={"DERMAGAN_TLS_CERTFILE": path(cert), "DERMAGAN_TLS_KEYFILE": path(key)})
    assert done.returncode == 2 and words in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_plain_http_at_the_https_port_is_answered_and_nothing_else_changes(models_dir: Path,
                                                                         pki: dict[str, Path]) -> None:
    """One process (the two-worker test above checks the answer too): a plain-HTTP request -- an upload -- is
    answered a 400 naming the mistake, counted and logged with the client, its body dropped; a connection that
    says nothing is closed after DERMAGAN_KEEP_ALIVE_S, one whose handshake stalls after DERMAGAN_HEAD_TIMEOUT_S;
    TLS clients are served as before; and a SIGTERM lets a request in flight over TLS finish, refuses new
    connections and ends the process."""
    tls = {"DERMAGAN_TLS_CERTFILE": str(pki["cert"]), "DERMAGAN_TLS_KEYFILE": str(pki["key"])}
    with serve(models_dir, **tls, DERMAGAN_MODELS="fixture-add,fixture-cycle-remove", DERMAGAN_KEEP_ALIVE_S="1",
               DERMAGAN_HEAD_TIMEOUT_S="2", DERMAGAN_DRAIN_TIMEOUT_S="20") as s:
        port = int(s.url.rsplit(":", 1)[1])
        trusted = ssl.create_default_context(cafile=str(pki["ca"]))
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)  # says nothing
        stalled = socket.create_connection(("127.0.0.1", port), timeout=10)  # begins a handshake, then nothing
        stalled.sendall(b"\x16\x03\x01")
        t0 = time.monotonic()
        image, mask = encode(gradient(64, 80)), mask_png(rect_mask(64, 80, (10, 20, 40, 50)))
        body, ctype = multipart_images(image, mask)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:  # an upload sent in clear
            raw.sendall(f"POST /eczema/add HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            answer = b""
            while chunk := raw.recv(65536):
                answer += chunk
        head, _, text = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ") and b"connection: close" in head.lower(), answer
        assert b'"error":"bad_request"' in text and b"use https://" in text
        assert silent.recv(1) == b"" and time.monotonic() - t0 < 5  # closed for its silence, after ~1 s
        silent.close()
        with contextlib.suppress(ConnectionResetError):
            assert stalled.recv(1) == b""
        assert time.monotonic() - t0 < 6  # its handshake cut at DERMAGAN_HEAD_TIMEOUT_S (the TLS layer waited 60 s)
        stalled.close()
        with httpx.Client(base_url=s.url, verify=trusted, timeout=60) as c:
            assert c.post("/eczema/add", files={"image": ("i", image), "mask": ("m", mask)}).status_code == 200
            metrics = c.get("/metrics").text
            assert 'dermagan_request_failures_total{model="",reason="not_http"} 1.0' in metrics
            assert "answered 400 to 127.0.0.1:" in s.text() and "plain HTTP arrived at this HTTPS port" in s.text()

            # SIGTERM with a request in flight over TLS: it is answered, new connections are not, the process ends
            with cf.ThreadPoolExecutor(1) as pool:
                call = pool.submit(c.post, "/eczema/remove", files={"image": ("i", encode(gradient(1200, 1800)))},
                                   data={"work_px": "1200"})
                with httpx.Client(base_url=s.url, verify=trusted, timeout=10) as watcher:
                    t0 = time.monotonic()
                    while "dermagan_inflight_requests 1.0" not in watcher.get("/metrics").text:
                        assert time.monotonic() - t0 < 20, "the request was not in flight"
                        time.sleep(0.02)
                s.proc.send_signal(signal.SIGTERM)
                time.sleep(0.3)
                with pytest.raises(httpx.TransportError):
                    httpx.get(s.url + "/readyz", verify=trusted, timeout=5)
                assert call.result().status_code == 200
        assert s.proc.wait(timeout=30) == 0


def test_a_certificate_out_of_its_dates_is_warned_of_at_start_up_and_by_check(models_dir: Path,
                                                                              tmp_path: Path) -> None:
    """`serve --check` passed an expired certificate silently: the service starts (as nginx does; a renewed file
    takes a restart), but every client that verifies it refuses the connection."""
    import datetime as dt

    from dermagan.service.cli import tls_validity
    from dermagan.service.settings import Settings

    ca, now = trustme.CA(), dt.datetime.now(dt.timezone.utc)
    paths = {}
    for name, begins, ends in (("expired", now - dt.timedelta(days=30), now - dt.timedelta(days=1)),
                               ("future", now + dt.timedelta(days=2), now + dt.timedelta(days=90)),
                               ("ending", now - dt.timedelta(days=1), now + dt.timedelta(days=3)),
                               ("fine", now - dt.timedelta(days=1), now + dt.timedelta(days=90))):
        leaf = ca.issue_cert("127.0.0.1", not_before=begins, not_after=ends)
        paths[name] = (tmp_path / f"{name}.pem", tmp_path / f"{name}-key.pem")
        leaf.cert_chain_pems[0].write_to_path(str(paths[name][0]))
        leaf.private_key_pem.write_to_path(str(paths[name][1]))

    def said(name: str) -> str | None:
        cert, key = paths[name]
        return tls_validity(Settings.from_env({}, tls_certfile=cert, tls_keyfile=key))

    assert "the certificate expired on" in (said("expired") or "") and "renew it" in (said("expired") or "")
    assert "the certificate is not valid before" in (said("future") or "")
    assert re.search(r"the certificate expires on .*, in [23]\.\d days: renew it", said("ending") or "")
    assert said("fine") is None
    cert, key = paths["expired"]
    done = dermagan("serve", "--check", "--models-dir", str(models_dir),
                    env={"DERMAGAN_TLS_CERTFILE": str(cert), "DERMAGAN_TLS_KEYFILE": str(key),
                         "DERMAGAN_MODELS": "fixture-segment", "DERMAGAN_PROVIDERS": "CPUExecutionProvider"})
    assert done.returncode == 0 and "the certificate expired on" in done.stderr, done.stderr
