"""`dermagan edit`: folders of images edited offline, byte for byte what the service answers, resumable,
with the service's refusals per file and the paper's layout for segmentation data."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sample_images import decode, encode, exif_bytes, gradient, mask_png, rect_mask

from dermagan.cli import main


def _folder(root: Path) -> dict[str, tuple[bytes, bytes]]:
    """Images (and masks beside them, NAME_mask.png) of several sizes, formats and subfolders."""
    rng = np.random.default_rng(3)
    files = {
        "a": (encode(gradient(64, 64)), mask_png(rect_mask(64, 64, (10, 10, 30, 40)))),
        "sub/b": (encode(gradient(200, 150), "JPEG", quality=90, exif=exif_bytes(6)),
                  mask_png(rect_mask(150, 200, (20, 30, 90, 120)))),  # EXIF-turned: shown as 150 x 200
        "sub/deeper/c": (encode(rng.integers(0, 256, (90, 300, 3), dtype=np.uint8), "WEBP", lossless=True),
                         mask_png(rect_mask(90, 300, (5, 200, 60, 290)))),
    }
    for name, (image, mask) in files.items():
        suffix = {"a": ".png", "sub/b": ".jpg", "sub/deeper/c": ".webp"}[name]
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).with_suffix(suffix).write_bytes(image)
        (root / f"{name}_mask.png").write_bytes(mask)
    return files


def _edit(*argv: str, models: Path) -> int:
    return main(["edit", *argv, "--models-dir", str(models), "--providers", "CPUExecutionProvider"])


def test_edited_files_are_what_the_service_answers(client: httpx.Client, models_dir: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    files = _folder(photos)
    runs = {  # out folder -> (argv, endpoint, extra form fields, with mask, output suffix)
        "add": (["add", str(photos), "--masks", str(photos)], "/eczema/add", {}, True, ".png"),
        "remove-free": (["remove", str(photos), "--work-px", "100", "--format", "jpeg", "--quality", "70"],
                        "/eczema/remove", {"work_px": "100", "format": "jpeg", "quality": "70"}, False, ".jpg"),
        "segment": (["segment", str(photos), "--output", "probability"], "/eczema/segment", {"output": "probability"},
                    False, ".png"),
    }
    for out, (argv, endpoint, form, with_mask, suffix) in runs.items():
        assert _edit(*argv, "--out", str(tmp_path / out), models=models_dir) == 0, out
        written = sorted(p.relative_to(tmp_path / out).as_posix() for p in (tmp_path / out).rglob("*") if p.is_file())
        assert written == sorted([f"{n}{suffix}" for n in files] + ["provenance.json"]), out  # masks not edited
        for name, (image, mask) in files.items():
            upload = {"image": image, **({"mask": mask} if with_mask else {})}
            served = client.post(endpoint, files=upload, data=form)
            assert served.status_code == 200, served.text
            assert (tmp_path / out / f"{name}{suffix}").read_bytes() == served.content, (out, name)
    # the mask-free edit at work_px 100 of a 90 x 300 image ran several tiles per image
    assert decode((tmp_path / "remove-free" / "sub/deeper/c.jpg").read_bytes()).shape == (90, 300, 3)
    record = json.loads((tmp_path / "remove-free" / "provenance.json").read_text())
    assert record["task"] == "cycle-remove" and record["settings"]["work_px"] == 100 and record["runs"][0]["written"] == 3


def test_paper_layout_pairs_each_result_with_the_mask_asked_for(client: httpx.Client, models_dir: Path,
                                                               tmp_path: Path) -> None:
    """The paper's folders: data/image/NAME_image.png with data/patho/NAME_patho.png, edited into the same
    layout (a data set `dermagan train segment --data OUT` reads); the EXIF-turned JPEG's mask is the one
    of the image as shown."""
    data = tmp_path / "data"
    files = _folder(tmp_path / "flat")
    (data / "image").mkdir(parents=True)
    (data / "patho").mkdir(parents=True)
    for name, (image, mask) in files.items():
        stem = name.replace("/", "_")
        (data / "image" / f"{stem}_image.jpg").write_bytes(image)  # any format: the results are PNG
        (data / "patho" / f"{stem}_patho.png").write_bytes(mask)
    out = tmp_path / "augmented"
    assert _edit("add", str(data / "image"), "--masks", str(data / "patho"), "--layout", "paper", "--out", str(out),
                 models=models_dir) == 0
    for name, (_, mask) in files.items():
        stem = name.replace("/", "_")
        image = (data / "image" / f"{stem}_image.jpg").read_bytes()
        served = client.post("/eczema/add", files={"image": image, "mask": mask})
        assert (out / "image" / f"{stem}_image.png").read_bytes() == served.content
        assert np.array_equal(decode((out / "patho" / f"{stem}_patho.png").read_bytes()) > 127, decode(mask) > 127)


def test_refused_files_are_skipped_with_the_services_message_and_a_rerun_continues(
        models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos = tmp_path / "photos"
    _folder(photos)
    (photos / "broken.png").write_bytes(encode(gradient(40, 40))[:60])
    (photos / "broken_mask.png").write_bytes(mask_png(rect_mask(40, 40, (0, 0, 9, 9))))
    (photos / "empty.png").write_bytes(encode(gradient(40, 40)))
    (photos / "empty_mask.png").write_bytes(mask_png(np.zeros((40, 40), bool)))
    (photos / "notes.txt").write_text("not an image")
    (photos / ".hidden.png").write_bytes(b"")
    out = tmp_path / "out"
    argv = ["add", str(photos), "--masks", str(photos), "--out", str(out)]
    assert _edit(*argv, models=models_dir) == 1
    captured = capsys.readouterr()
    assert f"skipped {photos / 'broken.png'} (mask {photos / 'broken_mask.png'}): image: could not decode" in captured.err
    assert "empty.png" not in captured.err  # an empty mask: nothing to edit, not a failure
    assert ("add: 3 images by fixture-add (CPUExecutionProvider)" in captured.out
            and "1 with an empty mask left alone; 1 failed" in captured.out)
    assert not (out / "broken.png").exists() and not (out / "empty.png").exists() and not list(out.rglob("*.part"))
    # a rerun edits only what is missing; the refused ones are refused again
    (out / "a.png").unlink()
    assert _edit(*argv, models=models_dir) == 1
    assert "add: 1 image by" in capsys.readouterr().out and (out / "a.png").is_file()
    assert [r["written"] for r in json.loads((out / "provenance.json").read_text())["runs"]] == [3, 1]
    # other settings into the same folder are refused, naming what changed
    with pytest.raises(SystemExit, match=r"holds results made otherwise \(settings.format 'png' -> 'webp'\)"):
        _edit(*argv, "--format", "webp", models=models_dir)


@pytest.mark.parametrize(("argv", "message"), [
    (["segment", "{photos}", "--format", "jpeg"], r"not for segment .*: --format"),
    (["add", "{photos}", "--layout", "paper"], r"--layout paper is for add with --masks"),
    (["remove", "{photos}", "--masks", "{photos}", "--work-px", "300"], r"--work-px applies to edits without masks"),
    (["add", "{photos}", "--quality", "50"], r"--quality is 1-100 and applies to --format jpeg or webp"),
    (["add", "{photos}", "--work-px", "10"], r"--work-px must be at least 64 \(this model's resolution\)"),
    (["add", "{photos}/nothing"], r"nothing: no such file or folder"),
    # (a --masks folder inside the images' folder holds masks only: its images are not edited)
    (["add", "{photos}", "--masks", "{photos}/sub"], r"no mask in .*sub for 1 of 1 images \(.*a\.png\)"),
    (["add", "{photos}", "--model", "fixture-remove", "--masks", "{photos}"],
     r"no add model named 'fixture-remove' in .* \(its add models: \['fixture-add'\]\)"),
    (["add", "{photos}", "--url", "localhost:8000"],
     r"--url 'localhost:8000': give the service's base URL with its scheme, e.g. http://localhost:8000"),
    # these meant nothing without --url and were ignored; with it, 0 was refused only after the images were paired
    (["remove", "{photos}", "--concurrency", "8"], r"--concurrency: for --url \(requests to a running service\)"),
    (["remove", "{photos}", "--tries", "0"], r"--tries: for --url"),
    (["remove", "{photos}", "--url", "http://127.0.0.1:9", "--concurrency", "0", "--tries", "-1"],
     r"--concurrency 0, --tries -1: must be at least 1"),
])
def test_edits_that_cannot_run_stop_before_any_work(models_dir: Path, tmp_path: Path, argv: list[str],
                                                    message: str) -> None:
    photos = tmp_path / "photos"
    _folder(photos)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=message):
        _edit(*[a.format(photos=photos) for a in argv], "--out", str(out), models=models_dir)
    assert not out.exists() or not any(out.iterdir())


def test_results_are_never_written_over_or_among_the_images_read(models_dir: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    photos = tmp_path / "photos"
    _folder(photos)
    for out in (photos, tmp_path):  # the images' own folder, one holding it
        with pytest.raises(SystemExit, match=r"--out .* holds .*, which this run reads"):
            _edit("remove", str(photos), "--out", str(out), models=models_dir)
    with pytest.raises(SystemExit, match=r"--out .*sub lies in .*photos and holds images that no `dermagan edit` wrote"):
        _edit("remove", str(photos), "--out", str(photos / "sub"), models=models_dir)  # its images would be skipped
    # a results folder inside the images' folder is allowed, and never read as input (nor by later runs)
    inside = photos / "results"
    for _ in range(2):
        assert _edit("remove", str(photos / "sub"), str(photos / "a.png"), "--out", str(inside), models=models_dir) == 0
    assert "remove: 0 images by fixture-cycle-remove (CPUExecutionProvider)" in capsys.readouterr().out.splitlines()[-1]
    assert _edit("segment", str(photos), "--out", str(inside / "seg"), models=models_dir) == 0
    assert sorted(p.relative_to(inside / "seg").as_posix() for p in (inside / "seg").rglob("*.png")) == [
        "a.png", "sub/b.png", "sub/deeper/c.png"]


def test_with_url_a_running_service_edits_the_folder_through_its_refusals(
        server: Any, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """--url: the same files as the offline edit (the service's answers), its API key from DERMAGAN_API_KEY,
    and a full service's 503s retried after their Retry-After until every image is done."""
    from conftest import live_server, settings_for

    photos = tmp_path / "photos"
    _folder(photos)
    assert _edit("add", str(photos), "--masks", str(photos), "--out", str(tmp_path / "local"), models=models_dir) == 0
    assert _edit("add", str(photos), "--masks", str(photos), "--out", str(tmp_path / "remote"), "--url", server.url,
                 models=models_dir) == 0
    for name in ("a.png", "sub/b.png", "sub/deeper/c.png"):
        assert (tmp_path / "remote" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    assert json.loads((tmp_path / "remote" / "provenance.json").read_text())["settings"]["service"] == server.url
    with pytest.raises(SystemExit, match=r"holds results made otherwise \(settings.mask_context 0.5 -> None; "
                                         r"settings.mask_dilate_px 8 -> None; settings.service None -> 'http"):
        _edit("add", str(photos), "--masks", str(photos), "--out", str(tmp_path / "local"), "--url", server.url,
              models=models_dir)
    capsys.readouterr()
    # a service that admits one request at a time, with an API key
    for i in range(6):
        (photos / f"more{i}.png").write_bytes(encode(gradient(120, 160)))
    settings = settings_for(models_dir, max_inflight=1, queue_size=1, retry_after_s=1, api_key="k3y")
    with live_server(settings) as full:
        monkeypatch.delenv("DERMAGAN_API_KEY", raising=False)
        with pytest.raises(SystemExit, match=r"needs an API key and no key was sent: set DERMAGAN_API_KEY to one of the "
                                             r"service's keys \(GET /v1/models answered 401\)$"):
            _edit("remove", str(photos), "--out", str(tmp_path / "full"), "--url", full.url, models=models_dir)
        monkeypatch.setenv("DERMAGAN_API_KEY", "wrong")
        with pytest.raises(SystemExit, match=r"needs an API key and the key in DERMAGAN_API_KEY was refused"):
            _edit("remove", str(photos), "--out", str(tmp_path / "full"), "--url", full.url, models=models_dir)
        monkeypatch.setenv("DERMAGAN_API_KEY", "k3y")
        assert _edit("remove", str(photos), "--out", str(tmp_path / "full"), "--url", full.url, "--concurrency", "4",
                     "--tries", "30", models=models_dir) == 0
    out = capsys.readouterr().out
    assert re.search(r"remove: 9 images by fixture-cycle-remove at http://127\.0\.0\.1:\d+ \(CPUExecutionProvider\) "
                     r"in [\d.]+ m?s; \d+ answers retried", out), out


def test_a_run_interrupted_before_its_end_has_already_recorded_its_recipe(models_dir: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from dermagan.service import edit

    photos = tmp_path / "photos"
    _folder(photos)
    out = tmp_path / "out"

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(edit, "_groups", interrupted)
    assert _edit("segment", str(photos), "--out", str(out), models=models_dir) == 130  # one line, no traceback
    assert capsys.readouterr().err.endswith("dermagan edit: interrupted; run it again: it skips the results already "
                                            "written\n")
    assert json.loads((out / "provenance.json").read_text())["runs"] == []
    monkeypatch.undo()
    with pytest.raises(SystemExit, match=r"holds results made otherwise \(settings.output 'mask' -> 'probability'\)"):
        _edit("segment", str(photos), "--out", str(out), "--output", "probability", models=models_dir)


def test_two_images_that_would_write_one_result_stop_the_run(models_dir: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    _folder(photos)
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "a.jpg").write_bytes(encode(gradient(40, 40), "JPEG"))
    with pytest.raises(SystemExit, match=r"photos/a\.png and .*more/a\.jpg would both be written to .*out/a\.png"):
        _edit("segment", str(photos), str(tmp_path / "more"), "--out", str(tmp_path / "out"), models=models_dir)
    assert not (tmp_path / "out").exists()  # refused before anything was written, provenance.json included
    # the same file named twice (in its folder and on its own) is one image, edited once
    assert _edit("segment", str(photos), str(photos / "a.png"), "--out", str(tmp_path / "once"), models=models_dir) == 0


def test_the_client_warns_when_images_would_cross_the_network_in_clear() -> None:
    from dermagan.service.edit_client import cleartext_warning

    for quiet in ("https://dermagan.example.org", "http://localhost:8000", "http://127.0.0.2:8000", "http://[::1]:8000"):
        assert cleartext_warning(quiet, with_key=True) is None, quiet
    warning = cleartext_warning("http://10.1.2.3:8000", with_key=False)
    assert warning is not None and warning.startswith("the images go to 10.1.2.3 unencrypted")
    assert "DERMAGAN_TLS_CERTFILE" in warning
    assert cleartext_warning("http://gpu-box:8000", with_key=True).startswith("the images and the API key go to gpu-box")


def test_with_url_answers_of_a_model_changed_mid_run_are_not_kept(models_dir: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The service reloads another add model (same name, new file) while the folder is being edited: the
    answers it makes are refused by the client (X-Dermagan-Model-Sha256), so one folder and its provenance
    hold one model's results."""
    import asyncio
    import shutil
    import threading
    import time

    import onnx
    from conftest import live_server, settings_for, slow_run

    folder = tmp_path / "models"
    shutil.copytree(models_dir, folder)
    photos = tmp_path / "photos"
    for i in range(6):
        (photos / f"p{i}.png").parent.mkdir(parents=True, exist_ok=True)
        (photos / f"p{i}.png").write_bytes(encode(gradient(64, 64)))
        (photos / f"p{i}_mask.png").write_bytes(mask_png(rect_mask(64, 64, (10, 10, 30, 40))))
    out = tmp_path / "out"
    with live_server(settings_for(folder, models=("fixture-add",))) as s:
        first_sha = s.runtime.engines["fixture-add"].entry.sha256
        slow_run(s, "fixture-add", 0.4)  # the first model answers slowly: the run is still going at the reload
        done: dict[str, int] = {}
        run = threading.Thread(target=lambda: done.setdefault("rc", _edit(
            "add", str(photos), "--masks", str(photos), "--out", str(out), "--url", s.url, "--concurrency", "1",
            models=folder)))
        run.start()
        t0 = time.monotonic()
        while not list(out.glob("p*.png")):
            assert time.monotonic() - t0 < 30
            time.sleep(0.02)
        # another file for the same model name (its bytes differ: a new sha256), then SIGHUP's reload
        model = onnx.load(folder / "fixture-add.onnx")
        model.doc_string = "retrained"
        onnx.save(model, folder / "fixture-add-2.onnx")
        manifest = json.loads((folder / "manifest.json").read_text())
        for entry in manifest["models"]:
            if entry["name"] == "fixture-add":
                from dermagan.manifest import sha256_file

                entry.update(file="fixture-add-2.onnx", version="2", sha256=sha256_file(folder / "fixture-add-2.onnx"))
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
        assert asyncio.run_coroutine_threadsafe(s.runtime.reload(), s.runtime._loop).result(30)
        run.join(60)
    assert done["rc"] == 1
    kept = sorted(p.name for p in out.glob("p*.png"))
    assert 1 <= len(kept) < 6, kept  # those made before the reload
    assert json.loads((out / "provenance.json").read_text())["model"]["sha256"] == first_sha
    err = capsys.readouterr().err
    assert "made by another model than this run's" in err and "changed during the run" in err
