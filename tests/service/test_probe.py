"""service/probe.py: `dermagan probe` finds the local service from its DERMAGAN_* variables."""

from __future__ import annotations

import argparse

import pytest

from dermagan.service import probe


def test_probe_reads_the_services_address_from_its_settings(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("DERMAGAN_HOST", "DERMAGAN_PORT", "DERMAGAN_TLS_CERTFILE"):
        monkeypatch.delenv(name, raising=False)
    assert probe.target() == ("http", "127.0.0.1", 8000)  # Settings' defaults (0.0.0.0: ask over loopback)
    monkeypatch.setenv("DERMAGAN_HOST", "::")
    monkeypatch.setenv("DERMAGAN_PORT", "8443")
    monkeypatch.setenv("DERMAGAN_TLS_CERTFILE", "/run/secrets/cert.pem")
    assert probe.target() == ("https", "::1", 8443)
    monkeypatch.setenv("DERMAGAN_HOST", "10.1.2.3")
    assert probe.target()[1] == "10.1.2.3"
    # --host / --port win (a server started with `serve --port 8021`: the probe asked :8000)
    assert probe.target("0.0.0.0", 8021) == ("https", "127.0.0.1", 8021)
    monkeypatch.setenv("DERMAGAN_PORT", "eighty")
    assert probe.target(port=8021)[2] == 8021
    assert probe.run(argparse.Namespace(live=False, timeout=1.0, host=None, port=None)) == 1
    assert "DERMAGAN_PORT is not a port number: 'eighty'" in capsys.readouterr().err
