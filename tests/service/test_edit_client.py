"""service/edit_client.py (`dermagan edit --url`) against a scripted service (httpx.MockTransport): which
answers it retries."""

from __future__ import annotations

import argparse
from pathlib import Path, PurePosixPath

import httpx
import pytest

from dermagan.service import edit, edit_client
from dermagan.service.edit import Item

MODEL = {"name": "m-add", "task": "add", "version": "1", "sha256": "ab" * 32, "resolution": [64, 64],
         "provider": "CPUExecutionProvider", "default": ["add"]}


def _editor(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, answers: list[httpx.Response],
            tries: int = 5) -> tuple[edit_client.RemoteEditor, list[httpx.Request]]:
    """A RemoteEditor whose service answers GET /v1/models with MODEL and each POST with the next of `answers`."""
    posted: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=[MODEL])
        posted.append(request)
        return answers[min(len(posted), len(answers)) - 1]

    real = httpx.Client
    monkeypatch.setattr(httpx, "Client", lambda **kw: real(transport=httpx.MockTransport(handler), **kw))
    monkeypatch.setattr(edit_client.time, "sleep", lambda s: None)  # Retry-After waits
    monkeypatch.delenv("DERMAGAN_API_KEY", raising=False)
    parser = argparse.ArgumentParser()
    edit.add_arguments(parser)
    args = parser.parse_args(["add", str(tmp_path), "--masks", str(tmp_path), "--out", str(tmp_path / "out"),
                              "--url", "http://127.0.0.1:9", "--tries", str(tries)])
    return edit_client.RemoteEditor(args, "add"), posted


def _item(tmp_path: Path) -> Item:
    (tmp_path / "a.png").write_bytes(b"image")
    (tmp_path / "a_mask.png").write_bytes(b"mask")
    return Item(tmp_path / "a.png", PurePosixPath("a"), tmp_path / "a_mask.png")


def test_model_unavailable_is_not_retried(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The service has no model for the task (its configuration): before 2026-12-05 each image was sent
    --tries times (10 by default) and then "gave up"."""
    refusal = httpx.Response(503, json={"error": "model_unavailable", "request_id": "r",
                                        "detail": "no loaded model serves task 'add'; this service has models for "
                                                  "['segment'] (its models folder and DERMAGAN_MODELS decide: "
                                                  "retrying will not help)"})
    editor, posted = _editor(monkeypatch, tmp_path, [refusal])
    result = editor._one(_item(tmp_path))
    assert len(posted) == 1 and editor.retries == 0
    assert result == ("the service answered 503 model_unavailable: no loaded model serves task 'add'; this service "
                      "has models for ['segment'] (its models folder and DERMAGAN_MODELS decide: retrying will not "
                      "help)")


def test_a_full_or_draining_service_is_still_retried(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    answers = [httpx.Response(503, headers={"retry-after": "1"}, json={"error": "queue_full", "detail": "full"}),
               httpx.Response(503, headers={"retry-after": "1"}, json={"error": "unavailable", "detail": "draining"}),
               httpx.Response(503, text="<html>a proxy's page</html>"),
               httpx.Response(504, json={"error": "deadline", "detail": "late"}),
               httpx.Response(200, content=b"edited", headers={"x-dermagan-model-sha256": MODEL["sha256"]})]
    editor, posted = _editor(monkeypatch, tmp_path, answers)
    assert editor._one(_item(tmp_path)) == (b"edited",)
    assert len(posted) == 5 and editor.retries == 4
