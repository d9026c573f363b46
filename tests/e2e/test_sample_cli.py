"""`dermagan sample`: the service's generated images, byte for byte, into class folders, resumable."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from dermagan.cli import main


def test_sampled_files_are_what_post_generate_answers(client: httpx.Client, models_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "aug"
    argv = ["sample", "--kind", "hand", "eczema", "--count", "11", "--seed", "40", "--out", str(out),
            "--models-dir", str(models_dir), "--providers", "CPUExecutionProvider"]
    assert main(argv) == 0
    assert sorted(p.name for p in (out / "hand").iterdir()) == sorted(f"hand_{s}.png" for s in range(40, 51))
    for kind, seed in (("hand", 40), ("hand", 47), ("hand", 50), ("eczema", 48)):
        served = client.post("/generate", json={"kind": kind, "seed": seed})
        assert served.status_code == 200
        assert (out / kind / f"{kind}_{seed}.png").read_bytes() == served.content, (kind, seed)
    record = json.loads((out / "provenance.json").read_text())
    assert record["hand"][0]["seeds"] == [40, 50] and len(record["hand"][0]["sha256"]) == 64
    # a second run continues: only the new seeds are drawn
    (out / "hand" / "hand_45.png").unlink()
    assert main([*argv[:5], "13", *argv[6:]]) == 0
    assert "hand: 3 images by" in capsys.readouterr().out
    assert len(list((out / "hand").glob("*.png"))) == 13 and not list(out.rglob("*.part"))
    # nothing left to draw: the progress line's rate counts drawn images (it read "13/13 (42453.8/s)"), and the
    # summary's time is not "0.0 s"
    assert main([*argv[:5], "13", *argv[6:]]) == 0
    out_err = capsys.readouterr()
    assert re.search(r"^hand: 0 images by .* in \d+ ms; 13 were there already", out_err.out, re.M), out_err.out
    assert "hand: " not in out_err.err
    assert len(json.loads((out / "provenance.json").read_text())["hand"]) == 2  # the run that drew nothing: no entry


def test_sample_refuses_to_mix_models_or_draw_what_no_model_draws(models_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "aug"
    (out).mkdir()
    (out / "provenance.json").write_text(json.dumps({"hand": [{"model": "old", "sha256": "0" * 64, "seeds": [0, 9]}]}))
    base = ["sample", "--count", "2", "--out", str(out), "--models-dir", str(models_dir)]
    with pytest.raises(SystemExit, match=r"holds images of another hand model \(sha256 000000000000"):
        main([*base, "--kind", "hand"])
    with pytest.raises(SystemExit, match=r"manifest not found"):
        main([*base, "--kind", "lesion", "--models-dir", str(tmp_path / "none")])
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit, match=r"cannot write under .*a-file: Not a directory"):
        main([*base, "--kind", "lesion", "--out", str(tmp_path / "a-file")])
    with pytest.raises(SystemExit, match=r"seeds --seed \.\. --seed \+ --count - 1 within 0\.\.9007199254740991 .*"
                                         r"got --seed 9007199254740991 --count 2 \(with that count the largest --seed "
                                         r"is 9007199254740990\)"):
        main([*base, "--kind", "lesion", "--seed", str(2**53 - 1)])


def test_sample_draws_a_generators_own_class_names(tmp_path: Path) -> None:
    """A generator of one's own classes (labels MEL, NV): `--kind MEL` draws its folder; a name no model draws
    is refused before anything is written."""
    from fixture_models import build_models

    models = tmp_path / "models"
    build_models(models, only=("generate",), own_classes=("MEL", "NV"))
    out = tmp_path / "aug"
    base = ["sample", "--count", "2", "--out", str(out), "--models-dir", str(models), "--providers", "CPUExecutionProvider"]
    assert main([*base, "--kind", "MEL", "NV"]) == 0
    assert sorted(p.name for p in (out / "MEL").iterdir()) == ["MEL_0.png", "MEL_1.png"]
    with pytest.raises(SystemExit, match=r"no model in .* draws '\.\./x'"):
        main([*base, "--kind", "../x"])
    assert sorted(p.name for p in out.iterdir()) == ["MEL", "NV", "provenance.json"]


def test_sample_with_a_named_model_draws_what_post_generate_draws_with_it(tmp_path: Path) -> None:
    """--model: the shared generator's hands instead of the one-kind hand generator's, byte for byte
    what POST /generate answers with the same `model`; a model that does not draw the kind is refused."""
    from conftest import live_server, settings_for
    from fixture_models import build_models

    models = tmp_path / "models"
    build_models(models, only=("generate",), hand_generator=True)
    out = tmp_path / "aug"
    base = ["sample", "--count", "2", "--seed", "7", "--models-dir", str(models), "--providers", "CPUExecutionProvider"]
    assert main([*base, "--kind", "hand", "--out", str(out), "--model", "fixture-generate"]) == 0
    assert main([*base, "--kind", "hand", "--out", str(tmp_path / "default")]) == 0
    # the folder began with the shared generator; the default for hands is now another: the refusal names it
    with pytest.raises(SystemExit, match=r"holds images of another hand model .* now fixture-hand-generate .*; "
                                         r"or finish it with the model it began with: --model fixture-generate$"):
        main([*base, "--kind", "hand", "--out", str(out)])
    with live_server(settings_for(models)) as s, s.client() as c:
        served = c.post("/generate", json={"kind": "hand", "seed": 8, "model": "fixture-generate"}).content
        assert (out / "hand" / "hand_8.png").read_bytes() == served
        assert (tmp_path / "default" / "hand" / "hand_8.png").read_bytes() == c.post(
            "/generate", json={"kind": "hand", "seed": 8}).content != served
    assert json.loads((out / "provenance.json").read_text())["hand"][0]["model"] == "fixture-generate"
    with pytest.raises(SystemExit, match=r"no generate model named 'fixture-hand-generate' .* draws 'eczema' "
                                         r"\(those that do: \['fixture-generate'\]\)"):
        main([*base, "--kind", "eczema", "--out", str(out), "--model", "fixture-hand-generate"])
    # a kind the named model does not draw, after one it does: refused before the first kind's images were drawn
    with pytest.raises(SystemExit, match=r"no generate model named 'fixture-hand-generate' .* draws 'eczema'"):
        main([*base, "--kind", "hand", "eczema", "--out", str(tmp_path / "two"), "--model", "fixture-hand-generate"])
    assert not (tmp_path / "two").exists()


def test_an_interrupted_sample_has_already_recorded_its_model(models_dir: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from dermagan.service import sample

    def interrupted(images: object) -> list[bytes]:
        raise KeyboardInterrupt

    monkeypatch.setattr(sample.pipeline, "finish_generate", interrupted)
    out = tmp_path / "aug"
    assert main(["sample", "--kind", "lesion", "--count", "3", "--out", str(out), "--models-dir", str(models_dir),
                 "--providers", "CPUExecutionProvider"]) == 130
    assert capsys.readouterr().err.endswith("dermagan sample: interrupted; run it again: it skips the images already "
                                            "written\n")
    (record,) = json.loads((out / "provenance.json").read_text())["lesion"]
    assert record["model"] == "fixture-generate" and len(record["sha256"]) == 64 and not list((out / "lesion").iterdir())
