"""The whole product on tiny models: `dermagan release` trains and exports every shipped model
family, and the real service serves what it wrote, endpoint by endpoint, over real HTTP.

This is the seam test from the top: nothing but the ONNX files and manifest.json passes from
training/ to service/.
"""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from dermagan import cli
from dermagan.manifest import load_manifest
from dermagan.service.settings import Settings
from dermagan.training import release

from conftest import live_server

EXPECTED = {"eczema-segment", "eczema-add", "eczema-remove", "cycle-add", "cycle-remove", "generate", "lesion-generate",
            "hand-generate"}


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("release")
    models = work / "models"
    rc = cli.main(["release", "--profile", "tiny", "--work", str(work / "runs"), "--models", str(models),
                   "--skip-eval", "--jobs", "2"])
    assert rc == 0
    return work, models


def test_release_exports_every_shipped_model(released):
    work, models = released
    manifest = load_manifest(models, verify=True)
    assert {m.name for m in manifest.models} == EXPECTED
    # exported two at a time (--jobs 2), listed in the recipe's order all the same
    from dermagan.training.release import SHIPPED

    assert [m.name for m in manifest.models] == [name for r in SHIPPED["tiny"] for name in r.models]
    gen = manifest.get("generate")
    assert gen.labels == ["eczema", "hand", "lesion"] and "label" in gen.inputs
    for name, kind in (("hand-generate", "hand"), ("lesion-generate", "lesion")):
        one = manifest.get(name)
        assert one.labels == [kind] and set(one.inputs) == {"z"}
    for m in manifest.models:
        assert m.recipe.startswith("dermagan train "), m.recipe
    # the CycleGAN's second stage started from the first one's networks, and its recipe says so
    tune = json.loads((work / "runs" / "cycle-tune" / "config.json").read_text())
    assert tune["init_from"] == str(work / "runs" / "cycle") and tune["loss"]["lambda_identity"] == 0.1
    assert f"--init-from {work / 'runs' / 'cycle'}" in manifest.get("cycle-add").recipe


def test_release_does_not_retrain_finished_runs(released, capsys):
    work, models = released
    before = {p: p.stat().st_mtime_ns for p in (work / "runs").glob("*/checkpoints/last.pt")}
    assert len(before) == 8
    rc = cli.main(["release", "--profile", "tiny", "--work", str(work / "runs"), "--models", str(models),
                   "--skip-eval", "--only", "segment"])
    assert rc == 0
    assert "finished" in capsys.readouterr().out
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before


def test_a_recipe_that_asks_for_more_steps_resumes_the_finished_run(released, monkeypatch, capsys):
    from dataclasses import replace

    work, models = released
    runs = work / "runs"
    done, planned = release.run_progress(runs / "segment")
    assert done >= planned
    more = tuple(replace(r, args=(*r.args, "--steps", str(planned + 2))) if r.run == "segment" else r
                 for r in release.SHIPPED["tiny"])
    monkeypatch.setitem(release.SHIPPED, "tiny", more)
    rc = cli.main(["release", "--profile", "tiny", "--work", str(runs), "--models", str(models),
                   "--skip-eval", "--only", "segment"])
    assert rc == 0
    assert "not trained again" not in capsys.readouterr().out
    assert release.run_progress(runs / "segment") == (planned + 2, planned + 2)
    history = json.loads((runs / "segment" / "config.json").read_text())
    assert history["steps"] == planned + 2


def test_a_stage_whose_source_has_not_finished_waits(tmp_path, capsys):
    rc = cli.main(["release", "--profile", "tiny", "--work", str(tmp_path / "runs"), "--models", str(tmp_path / "m"),
                   "--skip-eval", "--only", "cycle-tune"])
    assert rc == release.AGAIN_STATUS == 75  # "run it again", not done
    out = capsys.readouterr().out
    assert "cycle-tune: starts from cycle, which has not finished; run the recipe again" in out
    assert "1 of 1 runs short of their steps (cycle-tune)" in out
    assert not (tmp_path / "runs" / "cycle-tune").exists()


def test_a_sitting_that_stops_short_exits_75_and_the_next_one_finishes_with_0(tmp_path, capsys):
    """A script driving sittings reads the exit status: 75 (EX_TEMPFAIL) while runs are short of their
    steps, 0 once the recipe is done. Before, both were 0 and only the printed lines told them apart."""
    argv = ["release", "--profile", "tiny", "--work", str(tmp_path / "runs"), "--models", str(tmp_path / "m"),
            "--skip-eval", "--only", "segment"]
    assert cli.main([*argv, "--minutes", "0.0001"]) == 75  # the budget ends after its first step
    done, steps = release.run_progress(tmp_path / "runs" / "segment")
    assert done < steps
    out = capsys.readouterr().out
    assert f"segment: at step {done}/{steps}; run the recipe again" in out and "(exit status 75)" in out
    assert not (tmp_path / "m" / "manifest.json").exists()  # nothing exported short of its steps
    assert cli.main([*argv, "--no-train", "--export-partial"]) == 75  # exported, but the recipe is not done
    assert "eczema-segment" in (tmp_path / "m" / "manifest.json").read_text()
    assert "(exit status 75)" in capsys.readouterr().out
    assert cli.main(argv) == 0
    assert release.run_progress(tmp_path / "runs" / "segment") == (steps, steps)
    assert "short of their steps" not in capsys.readouterr().out


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_service_serves_the_released_models(released):
    _, models = released
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    mask = np.zeros((50, 70), np.uint8)
    mask[10:30, 20:45] = 255
    with live_server(Settings(models_dir=models, max_delay_ms=1)) as server, server.client() as c:
        info = c.get("/v1/models").json()
        listed = {m["name"] for m in info}
        assert listed == EXPECTED
        # what each model is: its data, when it was exported, its headline metrics (none: this release skips evaluate)
        manifest = {m["name"]: m for m in json.loads((models / "manifest.json").read_text())["models"]}
        for m in info:
            assert m["trained_on"].startswith("synthetic") and m["created"] == manifest[m["name"]]["created"]
            assert m["metrics"] == manifest[m["name"]]["metrics"]
        for kind in ("eczema", "hand", "lesion"):
            r = c.post("/generate", json={"kind": kind, "seed": 3})
            assert r.status_code == 200, r.text
            # of the generators drawing a kind, the one with the fewest kinds
            assert r.headers["x-dermagan-model"] == ("generate" if kind == "eczema" else f"{kind}-generate")
            assert Image.open(io.BytesIO(r.content)).size == (32, 32)
        for path in ("/eczema/add", "/eczema/remove"):
            r = c.post(path, files={"image": ("i.png", _png(image), "image/png"), "mask": ("m.png", _png(mask), "image/png")})
            assert r.status_code == 200, r.text
            out = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
            assert out.shape == image.shape
            far = np.zeros(mask.shape, bool)  # well outside the dilated, feathered mask
            far[:, :6] = far[:, 62:] = far[46:, :] = True
            assert np.array_equal(out[far], image[far]), path
            r = c.post(path, files={"image": ("i.png", _png(image), "image/png")})  # no mask: the CycleGAN
            assert r.status_code == 200, r.text
            assert Image.open(io.BytesIO(r.content)).size == (70, 50)
        r = c.post("/eczema/segment", files={"image": ("i.png", _png(image), "image/png")})
        assert r.status_code == 200, r.text
        seg = Image.open(io.BytesIO(r.content))
        assert seg.size == (70, 50) and seg.mode in ("L", "1")
        assert "dermagan_requests_total" in c.get("/metrics").text
        assert json.loads(c.get("/readyz").text)


def test_release_no_train_exports_without_training(released, capsys):
    work, models = released
    before = {p: p.stat().st_mtime_ns for p in (work / "runs").glob("*/checkpoints/last.pt")}
    rc = cli.main(["release", "--profile", "tiny", "--work", str(work / "runs"), "--models", str(models),
                   "--skip-eval", "--no-train", "--only", "add"])
    assert rc == 0
    assert "release: $" not in capsys.readouterr().out  # no training command was started
    assert {p: p.stat().st_mtime_ns for p in before} == before
    load_manifest(models, verify=True).get("eczema-add")


def test_selection_score_prefers_more_targets_met_then_smaller_shortfall():
    from dermagan.training.release import selection_score

    def doc(*targets):
        return {"models": {"m": {"targets": [{"result": r, "mean": m, "threshold": t} for r, m, t in targets]}}}

    one_met = doc(("pass", 30, 28), ("miss", 0.5, 0.9))
    none_met_close = doc(("miss", 27, 28), ("miss", 0.89, 0.9))
    assert selection_score(one_met) > selection_score(none_met_close)
    assert selection_score(doc(("miss", 0.85, 0.9))) > selection_score(doc(("miss", 0.8, 0.9)))
    assert selection_score(doc(("pass", 1, 0), ("n/a", None, 0.9)))[:2] == (1, 0.0)  # n/a targets do not count


def test_among_checkpoints_passing_alike_the_widest_smallest_margin_wins_not_the_latest():
    """All pass: the one whose closest call is furthest from its threshold, relative to it (the hand
    generator's validation figures of 2026-12-06, steps 5500 and 6000: the latest, the old rule's
    pick, had a KID just under its threshold)."""
    from dermagan.training.release import selection_score

    def doc(kid, c2st):
        return {"models": {"m": {"targets": [
            {"result": "pass", "mean": kid, "threshold": 0.0166},  # KID <= 2x floor
            {"result": "pass", "mean": 0.88, "threshold": 0.6},  # coverage
            {"result": "pass", "mean": c2st, "threshold": 0.8},  # two-sample accuracy
            {"result": "pass", "mean": 0.0, "threshold": 0.05}]}}}  # copy rate

    s5500, s6000 = selection_score(doc(0.0120, 0.673)), selection_score(doc(0.0157, 0.687))
    assert s5500[:2] == s6000[:2] == (4, 0.0)
    assert s5500[2] == pytest.approx((0.8 - 0.673) / 0.8)  # its closest call: the two-sample accuracy
    assert s6000[2] == pytest.approx((0.0166 - 0.0157) / 0.0166)  # KID, 5 % under its threshold
    assert s5500 > s6000
    # met and shortfall still come first: a narrow pass of one more target beats wide passes of fewer
    assert selection_score(doc(0.0165, 0.79)) > selection_score(
        {"models": {"m": {"targets": [{"result": "pass", "mean": 0.0, "threshold": 0.0166},
                                      {"result": "miss", "mean": 0.81, "threshold": 0.8}]}}})


def test_a_tie_in_the_last_bits_goes_to_the_later_checkpoint():
    """lesion-generate's validation rows of 2026-12-07 (steps 8000 and 9000): both met 4 of 4 with a two-sample
    accuracy of 0.595 as their closest call; the margins came out 2e-16 apart, the earlier one higher."""
    from dermagan.training.release import selection_rank

    rows = [{"step": 8000, "met": 4, "shortfall": 0.0, "margin": 0.2562500000000001},
            {"step": 9000, "met": 4, "shortfall": -0.0, "margin": 0.2562499999999999},
            {"step": 7000, "met": 4, "shortfall": 0.0, "margin": 0.23125}]
    assert max(rows, key=selection_rank)["step"] == 9000
    rows.append({"step": 6000, "met": 4, "shortfall": 0.0, "margin": 0.2563})  # a real difference still wins
    assert max(rows, key=selection_rank)["step"] == 6000


def test_release_chooses_the_checkpoint_on_the_validation_split(released, tmp_path, monkeypatch):
    """A run marked `select` is evaluated at every kept checkpoint on the validation split; the best
    one is exported, and its card says which and why."""
    from dermagan.training.metrics import feature_training as ft
    from dermagan.training.metrics import toy
    from dermagan.training.metrics.features import save_extractor

    work, models = released
    scratch = tmp_path / "models"
    shutil.copytree(models, scratch)
    cfg = ft.tiny()  # a small in-project feature space: its quality does not matter here
    net, classes, facts = ft.train_feature_net(cfg, ft.render_feature_data(cfg.per_kind, cfg.render_size, render=toy.render), log=None)
    save_extractor(net, scratch / "feature-extractor.onnx", classes=classes, input_size=cfg.input_size, facts=facts)
    (tune,) = [r for r in release.SHIPPED["tiny"] if r.run == "cycle-tune"]
    assert tune.select
    step = release.select_checkpoint(tune, work / "runs", scratch, eval_n=8, seeds=2, jobs=2)  # both steps at once
    sel = json.loads((work / "runs" / "cycle-tune" / "selection.json").read_text())
    assert [row["step"] for row in sel["rows"]] == [3, 6] and sel["chosen"] == step and sel["split"] == "validation"
    assert sel["seeds"] == 2

    def no_evaluation(*args, **kwargs):
        raise AssertionError(f"evaluated again: {args[0]}")

    monkeypatch.setattr(release.subprocess, "run", no_evaluation)
    # the same checkpoints, settings and feature space: the table is read back, nothing is evaluated
    assert release.select_checkpoint(tune, work / "runs", scratch, eval_n=8, seeds=2) == step
    with pytest.raises(AssertionError, match="evaluated again"):  # other settings: evaluated afresh
        release.select_checkpoint(tune, work / "runs", scratch, eval_n=8, seeds=1)
    last = work / "runs" / "cycle-tune" / "checkpoints" / "step_0000006.pt"
    mtime = last.stat().st_mtime_ns
    os.utime(last, ns=(last.stat().st_atime_ns, mtime + 10**9))
    with pytest.raises(AssertionError, match=r"'--step', '6'"):  # only the rewritten checkpoint: step 3's row stays
        release.select_checkpoint(tune, work / "runs", scratch, eval_n=8, seeds=2)
    os.utime(last, ns=(last.stat().st_atime_ns, mtime))
    kept = work / "runs" / "cycle-tune" / "checkpoints" / f"step_{step:07d}.pt"
    os.utime(kept, ns=(kept.stat().st_atime_ns, kept.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="evaluated again"):  # a checkpoint written since: afresh
        release.select_checkpoint(tune, work / "runs", scratch, eval_n=8, seeds=2)
    monkeypatch.undo()
    assert {"cycle-add direction.target_share", "cycle-remove cycle.psnr"} <= set(sel["rows"][0]["targets"])
    for row in sel["rows"]:  # every metric kept, not only the targets': a later rule needs no new evaluation
        assert set(row["targets"]) < set(row["metrics"])
        assert {"cycle-add cycle.psnr", "cycle-remove direction.target_share"} <= set(row["metrics"])
        assert all(row["metrics"][k] == v for k, v in row["targets"].items())
    assert sel["rule"] == release.SELECTION_RULE
    chosen = max(sel["rows"], key=lambda row: (row["met"], -row["shortfall"], row["margin"], row["step"]))
    assert chosen["step"] == step
    note = release.selection_note(work / "runs" / "cycle-tune")
    assert f"Exported from the checkpoint of step {step}" in note and f"| {step} (exported) |" in note
    assert f" {chosen['margin']:.3f} |" in note and "widest margin" in note
    # a table chosen by the rule before the margin (ties to the latest step): re-evaluated, not reused
    path = work / "runs" / "cycle-tune" / "selection.json"
    old = {k: v for k, v in sel.items() if k != "rule"}
    path.write_text(json.dumps(old))
    assert "widest margin" not in release.selection_note(work / "runs" / "cycle-tune")  # its card says its own rule
    monkeypatch.setattr(release.subprocess, "run", no_evaluation)
    with pytest.raises(AssertionError, match="evaluated again"):
        release.select_checkpoint(tune, work / "runs", scratch, eval_n=8, seeds=2)
    monkeypatch.undo()
    path.write_text(json.dumps(sel))


def test_cpu_recipe_names_its_precision_so_a_resumed_run_follows_this_cpu(tmp_path):
    """bf16 where the CPU has it natively, else an explicit fp32: `--resume` keeps a run's own precision
    unless told, and a run begun in bf16 on an AMX box would be emulated (>10x slower) on an AVX2 one."""
    from dermagan.training.config import native_bf16
    from dermagan.training.release import SHIPPED, train_command

    want = "bf16" if native_bf16() else "none"
    for r in SHIPPED["cpu"]:
        assert r.args[r.args.index("--amp") + 1] == want, r.run
    r = next(x for x in SHIPPED["cpu"] if x.run == "segment")
    (tmp_path / "segment" / "checkpoints").mkdir(parents=True)
    (tmp_path / "segment" / "checkpoints" / "last.pt").write_bytes(b"")
    (tmp_path / "segment" / "config.json").write_text(json.dumps({"steps": 10, "amp": "bf16"}))
    cmd = train_command(r, tmp_path, 5)
    assert "--resume" in cmd and cmd[cmd.index("--amp") + 1] == want
