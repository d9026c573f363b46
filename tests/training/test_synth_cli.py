"""`dermagan synth` end to end: it writes the paper layout, and the loaders read it back."""

import json

import numpy as np
import pytest
from PIL import Image

from dermagan.cli import main
from dermagan.training.data import ClassFolder, PairedFolder
from dermagan.training.synth import render


def _synth(*args: str) -> int:
    return main(["synth", "--no-progress", "--size", "32", *args])


def test_eczema_layout_is_read_back_by_paired_folder(tmp_path):
    out = tmp_path / "ecz"
    assert _synth("--kind", "eczema", "--count", "4", "--seed", "10", "--grades", "0,2", "--workers", "2", "--out", str(out)) == 0
    names = sorted(p.name for p in (out / "image").iterdir())
    assert names == [f"eczema_{10 + i:08d}_image.png" for i in range(4)]
    assert sorted(p.name for p in (out / "patho").iterdir()) == [n.replace("_image", "_patho") for n in names]
    assert sorted(p.name for p in (out / "healthy").iterdir()) == names
    assert sorted(p.name for p in (out / "soft").iterdir()) == [n.replace("_image", "_soft") for n in names]
    meta = [json.loads(line) for line in (out / "meta.jsonl").read_text().splitlines()]
    assert [m["seed"] for m in meta] == [10, 11, 12, 13] and [m["grade"] for m in meta] == [0, 2, 0, 2]
    assert {"ita", "ita_category", "fitzpatrick", "eczema"} <= set(meta[1])

    ds = PairedFolder(out)
    assert len(ds) == 4
    item = ds[1]
    assert item["name"] == "eczema_00000011"
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (1, 32, 32) and item["healthy"].shape == (3, 32, 32)
    # Byte-exact: what the loader returns is what the renderer made.
    s = render("eczema", 11, 32, grade=2)
    assert np.array_equal(((item["image"].numpy() + 1) * 127.5).round().astype(np.uint8).transpose(1, 2, 0), s.image)
    assert np.array_equal(item["mask"][0].numpy() * 255, s.mask)
    # PNGs carry pixels only.
    png = Image.open(out / "image" / names[0])
    assert not getattr(png, "text", {}) and "exif" not in png.info


def test_hand_layout_has_hand_masks(tmp_path):
    out = tmp_path / "hands"
    assert _synth("--kind", "hand", "--count", "2", "--workers", "1", "--grades", "3", "--out", str(out)) == 0
    ds = PairedFolder(out, size=16)
    item = ds[0]
    assert item["hand"].shape == (1, 16, 16) and set(item["hand"].unique().tolist()) <= {0.0, 1.0}
    assert item["mask"].sum() > 0
    full = PairedFolder(out)[0]  # containment is exact at full size (nearest-neighbour resizing may shift edges)
    assert ((full["mask"] > 0) & (full["hand"] == 0)).sum() == 0


def test_lesion_layout_is_read_back_by_class_folder(tmp_path):
    out = tmp_path / "les"
    assert _synth("--kind", "lesion", "--count", "6", "--workers", "2", "--out", str(out)) == 0
    ds = ClassFolder(out)
    assert ds.classes == ("MEL", "NV") and len(ds) == 6
    meta = [json.loads(line) for line in (out / "meta.jsonl").read_text().splitlines()]
    for m in meta:
        assert (out / m["files"]["image"]).is_file() and m["files"]["image"].startswith(f"train/{m['label']}/")
    labels = {ds.items[i][0].stem: ds.classes[int(ds[i]["label"])] for i in range(len(ds))}
    assert labels == {m["name"]: m["label"] for m in meta}


def test_refuses_a_non_empty_folder_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _synth("--count", "1", "--out", str(out)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _synth("--count", "2", "--workers", "1", "--out", str(out)) == 2
    assert _synth("--count", "2", "--workers", "1", "--out", str(out), "--overwrite") == 0
    assert _synth("--count", "1", "--workers", "1", "--out", str(out), "--overwrite") == 0
    assert len(list((out / "image").iterdir())) == 1  # the old data set was replaced, not merged
    assert (out / "keep.txt").read_text() == "mine"  # files that are not the data set stay


def test_preview_contact_sheet(tmp_path):
    path = tmp_path / "sheet.png"
    assert _synth("--preview", str(path)) == 0
    sheet = Image.open(path)
    assert sheet.mode == "RGB"
    rows = 6 + 2 + 2
    assert sheet.size[1] >= rows * 32 and sheet.size[0] >= 4 * 32


def test_options_the_kind_would_ignore_are_refused(tmp_path, capsys):
    for argv, words in ((["--kind", "eczema", "--view", "palmar"], "--view applies to --kind hand, not eczema"),
                        (["--kind", "lesion", "--grades", "1"], "--grades applies to --kind eczema and hand, not lesion"),
                        (["--kind", "hand", "--label", "MEL"], "--label applies to --kind lesion, not hand")):
        assert _synth("--count", "1", "--out", str(tmp_path / "d"), *argv) == 2
        assert words in capsys.readouterr().err
    assert _synth("--preview", str(tmp_path / "sheet.jpg")) == 2
    assert "the contact sheet is a PNG" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_bad_options(capsys):
    assert main(["synth", "--count", "1"]) == 2
    with pytest.raises(SystemExit):
        main(["synth", "--grades", "4", "--out", "x"])


def test_a_negative_seed_is_refused_before_the_folder_is_made(tmp_path, capsys):
    """Before, each pool worker raised numpy's "expected non-negative integer" (a traceback) after --out
    and its empty subfolders were made, so the next try also needed --overwrite."""
    out = tmp_path / "d"
    assert _synth("--count", "2", "--seed", "-5", "--out", str(out)) == 2
    assert "dermagan synth: --seed must be >= 0, got -5" in capsys.readouterr().err
    assert not out.exists()
