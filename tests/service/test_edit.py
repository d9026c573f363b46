"""service/edit.py (`dermagan edit`) holds a group of images in memory at once: groups share the image
budget (DERMAGAN_IMAGE_BUDGET_MP) as the service's requests do, charged the same way."""

from __future__ import annotations

import io
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from sample_images import encode, gradient

from dermagan.service import edit, pipeline
from dermagan.service.edit import Item
from dermagan.service.settings import Settings


def test_groups_keep_within_the_budget_and_an_image_over_it_goes_alone() -> None:
    weights = dict(a=5, b=5, c=5, d=20, e=1, f=1, g=1)
    items = [Item(Path(k), PurePosixPath(k)) for k in weights]
    weigh = lambda item: weights[str(item.image)]  # noqa: E731
    names = lambda groups: ["".join(str(i.image) for i in g) for g in groups]  # noqa: E731
    assert names(edit._groups(items, 8, weigh, 10)) == ["ab", "c", "d", "efg"]
    assert names(edit._groups(items, 2, weigh, 10)) == ["ab", "c", "d", "ef", "g"]

    def unweighed(item: Item) -> int:
        raise AssertionError("no budget: nothing is weighed")
    assert names(edit._groups(items, 3, unweighed, 0)) == ["abc", "def", "g"]
    assert list(edit._groups([], 3, weigh, 10)) == []


def test_an_image_weighs_what_the_service_charges_it(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(encode(gradient(150, 211)))
    item = Item(image, PurePosixPath("a"))
    settings = Settings()
    for task, work_px, expected in (
            ("add", None, 150 * 211),
            ("segment", None, 150 * 211),
            ("cycle-remove", None, pipeline.tiled_pixels(image.read_bytes(), (32, 32), work_px=32, max_pixels=settings.max_pixels)),
            ("cycle-add", 150, pipeline.tiled_pixels(image.read_bytes(), (32, 32), work_px=150, max_pixels=settings.max_pixels))):
        editor = SimpleNamespace(settings=settings, engine=SimpleNamespace(hw=(32, 32)), task=task,
                                 args=SimpleNamespace(work_px=work_px))
        assert edit._Editor.weight(editor, item) == expected, task  # type: ignore[arg-type]
    assert pipeline.tiled_pixels(image.read_bytes(), (32, 32), work_px=150, max_pixels=settings.max_pixels) > 4 * 150 * 211
    # files the editor will refuse (with the service's message) weigh nothing
    (tmp_path / "bad.png").write_bytes(b"not an image")
    editor = SimpleNamespace(settings=settings, engine=SimpleNamespace(hw=(32, 32)), task="cycle-add",
                             args=SimpleNamespace(work_px=None))
    assert edit._Editor.weight(editor, Item(tmp_path / "bad.png", PurePosixPath("bad"))) == 0  # type: ignore[arg-type]
    assert edit._Editor.weight(editor, Item(tmp_path / "gone.png", PurePosixPath("gone"))) == 0  # type: ignore[arg-type]


def test_weighing_an_image_reads_its_header_not_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder of large photographs is weighed before its groups are planned; the planning reads each file,
    the weighing only as far as its header (here at most 64 KiB of a 4000x3000 JPEG's megabytes)."""
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(encode(rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8), "JPEG", quality=90))
    read: list[int] = []

    class Counted(io.FileIO):
        def readinto(self, buffer: Any) -> int:  # type: ignore[override]
            n = super().readinto(buffer)
            read.append(n or 0)
            return n  # type: ignore[return-value]

    monkeypatch.setattr(Path, "open", lambda self, mode="r", *a, **k: io.BufferedReader(Counted(str(self), "rb")))
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("the whole file was read to weigh it"))
    editor = SimpleNamespace(settings=Settings(), engine=SimpleNamespace(hw=(32, 32)), task="add",
                             args=SimpleNamespace(work_px=None))
    assert edit._Editor.weight(editor, Item(photo, PurePosixPath("photo"))) == 4000 * 3000  # type: ignore[arg-type]
    assert 0 < sum(read) <= 64 * 1024 < photo.stat().st_size // 10
