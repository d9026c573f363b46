"""HTTPS served by `dermagan serve` itself (DERMAGAN_TLS_CERTFILE / _KEYFILE), for real: certificates from
a test CA (trustme), two workers, the edit client and `dermagan probe` over it, nothing in clear, and
broken certificate settings refused before start-up, naming the file."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import serve
from sample_images import encode, gradient, mask_png, rect_mask

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
        with pytest.raises(httpx.TransportError):  # nothing is answered in clear on the port
            httpx.get(s.url.replace("https://", "http://") + "/readyz", timeout=5)
        assert "serving on https://" in s.text()

        port = {"DERMAGAN_PORT": s.url.rsplit(":", 1)[1]}
        probe = dermagan("probe", env={**port, **tls})
        assert probe.returncode == 0, probe.stderr
        plain = dermagan("probe", env={**port, "DERMAGAN_TLS_CERTFILE": ""})  # asks over http: no answer
        assert plain.returncode == 1 and f"http://127.0.0.1:{port['DERMAGAN_PORT']}/readyz" in plain.stderr

        folder = tmp_path / "in"
        folder.mkdir()
        (folder / "a.png").write_bytes(image)
        (folder / "a_mask.png").write_bytes(mask)
        edited = dermagan("edit", "add", str(folder), "--masks", str(folder), "--out", str(tmp_path / "out"),
                          "--url", s.url, env={"SSL_CERT_FILE": str(pki["ca"])})  # the client trusts the CA
        assert edited.returncode == 0, edited.stderr
        assert (tmp_path / "out" / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
