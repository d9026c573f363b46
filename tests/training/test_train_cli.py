"""`dermagan train`: options -> config, early failures with clear messages, own folders, resume."""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from toy_triplets import one_thread  # noqa: F401 (a fixture)

from dermagan.cli import main
from dermagan.training import cli
from dermagan.training.checkpoint import load, load_exportables, save


pytestmark = pytest.mark.usefixtures("one_thread")


def _args(*argv):
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return p.parse_args(list(argv))


def test_options_override_the_preset_and_make_the_recipe():
    args = _args("cycle", "--preset", "paper", "--size", "64", "--lambda-cycle", "5", "--gan-loss", "hinge",
                 "--lr-g", "1e-3", "--ema", "0.99", "--kinds", "hand", "--no-flip", "--pool-size", "10", "--lambda-cycle-b", "0.5")
    cfg = cli.build_config(args)
    assert (cfg.size, cfg.loss.lambda_cycle, cfg.loss.gan, cfg.optim.lr_g) == (64, 5.0, "hinge", 1e-3)
    assert (cfg.optim.ema_beta, cfg.data.kinds, cfg.data.flip, cfg.pool_size) == (0.99, ("hand",), False, 10)
    assert cfg.net.g_blocks == 9 and cfg.net.ngf == 64 and cfg.loss.lambda_identity == 0.5  # reference defaults kept
    assert cfg.loss.lambda_cycle_b == 0.5 and "--lambda-cycle-b 0.5" in cfg.recipe
    assert cfg.recipe.startswith("dermagan train cycle --preset paper --size 64")
    assert "--no-flip" in cfg.recipe and "--kinds hand" in cfg.recipe
    assert cli.build_config(_args(*cfg.recipe.split()[2:])) == cfg  # the recipe rebuilds the config


def test_unet_generator_option_reaches_the_config_and_the_recipe():
    cfg = cli.build_config(_args("remove", "--preset", "paper", "--generator", "unet", "--g-unet-downs", "5", "--size", "64"))
    assert (cfg.net.generator, cfg.net.g_unet_downs) == ("unet", 5) and "--generator unet" in cfg.recipe
    assert cli.build_config(_args(*cfg.recipe.split()[2:])) == cfg
    assert cli.build_config(_args("remove", "--preset", "paper")).net.generator == "resnet"  # old default kept


def test_crop_option_reaches_the_config_and_the_recipe():
    cfg = cli.build_config(_args("remove", "--preset", "tiny", "--size", "64", "--crop", "32"))
    assert cfg.data.crop == 32 and "--crop 32" in cfg.recipe
    assert cli.build_config(_args(*cfg.recipe.split()[2:])) == cfg
    assert cli.build_config(_args("remove", "--preset", "tiny")).data.crop == 0  # off by default


def test_paper_generate_preset_is_the_papers():
    cfg = cli.build_config(_args("generate", "--preset", "paper"))
    assert (cfg.net.z_dim, cfg.net.disc, cfg.net.d_dropout, cfg.loss.gan, cfg.loss.real_label) == (100, "two_scale", 0.3, "bce", 0.95)
    assert cfg.optim.lr_g == cfg.optim.lr_d == 5e-5 and cfg.data.kinds == ("eczema", "hand", "lesion")
    modern = cli.build_config(_args("generate", "--preset", "modern"))
    assert modern.net.spectral_norm and modern.loss.gan == "hinge" and modern.optim.ema_beta > 0
    assert modern.augment == "color,translation,cutout" and modern.optim.lr_d != modern.optim.lr_g


@pytest.mark.parametrize("argv,message", [
    (["add", "--preset", "huge"], "unknown preset 'huge'; valid: paper, modern, tiny"),
    (["add", "--preset", "tiny", "--size", "30"], "size 30 does not fit the add network: it must be a multiple of 4"),
    (["generate", "--preset", "tiny", "--size", "96"], "8 * 2**k"),
    (["segment", "--preset", "tiny", "--size", "36"], "multiple of 8"),
    (["add", "--preset", "tiny", "--generator", "unet", "--size", "64"], "multiple of 128"),  # unet_128: 7 downs
    (["add", "--preset", "tiny", "--data", "/no/such/folder"], "data folder '/no/such/folder' does not exist"),
    (["add", "--preset", "tiny", "--kinds", "eczema,hand"], "add trains on one kind"),
    (["add", "--preset", "tiny", "--kinds", "feet"], "unknown --kinds 'feet'; valid: eczema, hand, lesion"),
    (["add", "--preset", "tiny", "--augment", "rotate"], "unknown augment 'rotate'"),
    (["add", "--preset", "tiny", "--kinds", "lesion"], "add needs 'mask'"),
    (["add", "--preset", "tiny", "--resume"], "no checkpoint"),
    (["add", "--preset", "tiny", "--device", "tpu"], "device must be cpu, cuda or cuda:N"),
    (["add", "--preset", "tiny", "--init-from", "/no/such/run"], "--init-from '/no/such/run': no checkpoint there"),
    (["add", "--preset", "tiny", "--val-every", "-1"], "--val-every must be >= 0 (0 = off) and --val-n >= 1"),
    (["cycle", "--preset", "tiny", "--lambda-cycle-b", "-1"], "--lambda-cycle-b must be >= 0, got -1.0"),
    (["segment", "--preset", "tiny", "--max-minutes", "-1"], "--max-minutes must be >= 0, got -1"),
    (["segment", "--preset", "tiny", "--max-minutes", "nan"], "--max-minutes must be >= 0, got nan"),
    (["remove", "--preset", "tiny", "--crop", "30"], "--crop 30 does not fit the remove network: it must be a "
                                                   "multiple of 4 from 32 to size 32 (0 = off)"),
    (["segment", "--preset", "tiny", "--size", "64", "--crop", "128"], "from 32 to size 64"),
    (["generate", "--preset", "tiny", "--crop", "32"], "--crop does not apply to generate"),
    (["add", "--preset", "tiny", "--patches", "480"], "--patches cuts your own photographs (--data)"),
    (["generate", "--preset", "tiny", "--fit", "crop"], "--fit shapes your own photographs (--data)"),
    (["segment", "--preset", "tiny", "--data", "/tmp", "--size", "64", "--patches", "48"],
     "--patches 48 is the shorter side the patches are cut from: at least size 64"),
    pytest.param(["add", "--preset", "tiny", "--device", "cuda"], "torch sees no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")),
])
def test_bad_configurations_fail_before_training(argv, message, tmp_path, capsys):
    assert main(["train", *argv, "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("dermagan train: error:")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.fixture(scope="module")
def paired_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("paired") / "eczema"
    assert main(["synth", "--kind", "eczema", "--count", "8", "--size", "32", "--out", str(out), "--workers", "1",
                 "--no-progress"]) == 0
    return out


def test_own_paired_folder_trains_and_resumes(paired_folder, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "remove", "--preset", "tiny", "--data", str(paired_folder), "--out", str(run), "--quiet"]
    assert main([*base, "--steps", "2"]) == 0
    assert main([*base, "--steps", "4", "--resume", "--lr-g", "1", "--preset", "modern"]) == 0  # the run's own
    assert "keeps the run's own preset, lr_g" in capsys.readouterr().err  # (--preset was ignored without a word)
    state = load(run / "checkpoints" / "last.pt")
    assert state["step"] == 4 and state["config"]["optim"]["lr_g"] != 1
    (e,) = load_exportables(run)
    assert e.facts["trained_on"] == "folder eczema" and e.facts["recipe"].startswith("dermagan train remove")
    assert "--data" in e.facts["recipe"]
    assert json.loads((run / "config.json").read_text())["steps"] == 4


def test_photographs_without_exact_pairs_train_unpaired(paired_folder, tmp_path, capsys):
    """Real data has no image with and without its eczema: healthy skin comes as images with an empty mask
    (the paper's healthy patches). add / remove with --unpaired and the CycleGAN train on that; add without
    --unpaired says what to pass."""
    from PIL import Image

    photos = tmp_path / "photos"
    shutil.copytree(paired_folder / "image", photos / "image")
    shutil.copytree(paired_folder / "patho", photos / "patho")
    for i, path in enumerate(sorted((paired_folder / "healthy").iterdir())[:3]):
        Image.open(path).convert("RGB").save(photos / "image" / f"skin{i}.jpg", quality=90)
        Image.new("L", Image.open(path).size, 0).save(photos / "patho" / f"skin{i}_patho.png")
    for family, extra in (("add", ["--unpaired"]), ("remove", ["--unpaired"]), ("cycle", [])):
        run = tmp_path / family
        assert main(["train", family, "--preset", "tiny", "--data", str(photos), "--out", str(run), "--steps", "1",
                     "--batch-size", "2", "--quiet", *extra]) == 0, capsys.readouterr().err
        assert load(run / "checkpoints" / "last.pt")["step"] == 1
    assert main(["train", "add", "--preset", "tiny", "--data", str(photos), "--out", str(tmp_path / "paired"),
                 "--quiet"]) == 2
    assert "pass --unpaired" in capsys.readouterr().err
    # the paper's way: 32 px patches of the 32 px photographs shown at 48 px (3 x 3 patches each)
    run = tmp_path / "patches"
    assert main(["train", "remove", "--preset", "tiny", "--data", str(photos), "--unpaired", "--patches", "48",
                 "--out", str(run), "--steps", "1", "--batch-size", "2", "--quiet"]) == 0, capsys.readouterr().err
    assert "--patches 48" in load(run / "checkpoints" / "last.pt")["config"]["recipe"]


def test_paired_folder_without_masks_fails_early(paired_folder, tmp_path, capsys):
    broken = tmp_path / "nomask"
    shutil.copytree(paired_folder, broken)
    shutil.rmtree(broken / "patho")
    assert main(["train", "segment", "--preset", "tiny", "--data", str(broken), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "patho" in err or "mask" in err


def test_generate_from_class_folders(tmp_path, capsys):
    lesions = tmp_path / "lesions"
    assert main(["synth", "--kind", "lesion", "--count", "8", "--size", "32", "--out", str(lesions), "--workers", "1",
                 "--no-progress"]) == 0
    run = tmp_path / "run"
    # a packed discriminator needs one class: said before anything is written
    assert main(["train", "generate", "--preset", "tiny", "--data", str(lesions / "train"), "--out", str(run),
                 "--steps", "1", "--batch-size", "2", "--d-pack", "2", "--quiet"]) == 2
    assert "--d-pack 2 needs one class (the samples of a pack must share theirs); this data has 2" in capsys.readouterr().err
    assert not run.exists()
    assert main(["train", "generate", "--preset", "tiny", "--data", str(lesions / "train"), "--out", str(run),
                 "--steps", "1", "--batch-size", "2", "--quiet"]) == 0
    (e,) = load_exportables(run)
    assert e.facts["labels"] and all(label.isupper() for label in e.facts["labels"])  # NV, MEL, ...


def _resumes_exactly_and_exports(tmp_path, options: list[str]) -> dict:
    """A tiny hand generator with `options`: 3 steps at once and 2 + 1 resumed give the same networks; the
    resumed run exports (export checks ONNX Runtime against PyTorch and that images never mix in a batch).
    Returns the resumed run's last checkpoint."""
    base = ["train", "generate", "--preset", "tiny", "--kinds", "hand", *options, "--quiet"]
    assert main([*base, "--out", str(tmp_path / "whole"), "--steps", "3"]) == 0
    assert main([*base, "--out", str(tmp_path / "run"), "--steps", "2"]) == 0
    assert main([*base, "--out", str(tmp_path / "run"), "--steps", "3", "--resume"]) == 0
    whole, state = load(tmp_path / "whole" / "checkpoints" / "last.pt"), load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert " ".join(options) in state["config"]["recipe"]
    for net in ("G", "D"):
        assert all(torch.equal(whole["nets"][net][k], v) for k, v in state["nets"][net].items())
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "models")]) == 0
    assert (tmp_path / "models" / "hand-generate.onnx").is_file()
    return state


def test_generate_with_the_colour_stddev_resumes_exactly_and_exports(tmp_path):
    state = _resumes_exactly_and_exports(tmp_path, ["--d-mbstd", "2", "--d-mbstd-colour", "1"])
    assert state["config"]["net"]["d_mbstd_colour"] == 1


def test_generate_with_attention_resumes_exactly_and_exports(tmp_path):
    state = _resumes_exactly_and_exports(tmp_path, ["--attention", "16"])
    assert state["config"]["net"]["attention"] == 16
    assert all(any(".gamma" in k for k in state["nets"][net]) for net in ("G", "D"))
    assert state["nets"]["G"]["body.5.gamma"] != 0  # learnt (it starts at 0)


def test_generate_with_a_packed_discriminator_trains_resumes_and_exports(tmp_path):
    run, models = tmp_path / "run", tmp_path / "models"
    base = ["train", "generate", "--preset", "tiny", "--kinds", "hand", "--d-pack", "2", "--out", str(run), "--quiet"]
    assert main([*base, "--steps", "2"]) == 0
    assert main([*base, "--steps", "3", "--resume"]) == 0
    state = load(run / "checkpoints" / "last.pt")
    assert state["step"] == 3 and state["config"]["net"]["d_pack"] == 2 and "--d-pack 2" in state["config"]["recipe"]
    assert state["nets"]["D"]["scale_1x.body.0.parametrizations.weight.original"].shape[1] == 6  # a pair's channels
    assert main(["export", str(run), "--out", str(models)]) == 0
    assert (models / "hand-generate.onnx").is_file()


def test_generate_from_the_ham10000_download(tmp_path, capsys, caplog):
    """The HAM10000 download: two image folders, the metadata CSV (image_id, dx) and hmnist_*.csv files of
    pixels beside it. --data takes the folder (its one labels CSV) or the CSV itself; the classes are dx.
    Its photographs are 4:3 (600x450): squashed with a warning, or cropped with --fit crop."""
    from PIL import Image

    from dermagan.training.synth import render

    ham = tmp_path / "ham"
    rows = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    for i in range(4):
        s = render("lesion", i, 32, label="MEL" if i % 2 else "NV")
        part = ham / f"HAM10000_images_part_{1 + i // 2}"
        part.mkdir(parents=True, exist_ok=True)
        Image.fromarray(s.image).resize((40, 30)).save(part / f"ISIC_{i:07d}.jpg", quality=90)
        rows.append(f"HAM_{i},ISIC_{i:07d},{'mel' if i % 2 else 'nv'},histo,50.0,male,back")
    (ham / "HAM10000_metadata.csv").write_text("\n".join(rows) + "\n")
    (ham / "hmnist_8_8_L.csv").write_text("pixel0000,pixel0001,label\n120,37,2\n")
    caplog.set_level("WARNING", logger="dermagan.training")
    for data, fit in ((ham, []), (ham / "HAM10000_metadata.csv", ["--fit", "crop"])):
        run = tmp_path / f"run-{data.name}"
        caplog.clear()
        assert main(["train", "generate", "--preset", "tiny", "--data", str(data), "--out", str(run), "--steps", "1",
                     "--batch-size", "2", "--quiet", *fit]) == 0, capsys.readouterr().err
        (e,) = load_exportables(run)
        assert e.facts["labels"] == ["MEL", "NV"]
        warned = [r.getMessage() for r in caplog.records if r.name == "dermagan.training"]
        if fit:
            assert warned == [] and json.loads((run / "config.json").read_text())["data"]["fit"] == "crop"
        else:
            assert len(warned) == 1 and "4 of the 4 images" in warned[0] and "--fit crop" in warned[0]
    assert e.facts["trained_on"] == "labels CSV HAM10000_metadata.csv"
    (ham / "second.csv").write_text("image_id,dx\nISIC_0000000,nv\n")
    assert main(["train", "generate", "--preset", "tiny", "--data", str(ham), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "holds 2 labels CSVs (HAM10000_metadata.csv, second.csv); pass the one to train on as --data" in capsys.readouterr().err


def test_max_minutes_stops_with_a_checkpoint_and_resume_finishes(tmp_path, capsys):
    """A run stopped short exits 75 (EX_TEMPFAIL, as `dermagan release` does), so that `train && export` exports only a
    finished run; before, it exited 0 like one. A finished run exits 0, also when resumed again."""
    run = tmp_path / "run"
    base = ["train", "segment", "--preset", "tiny", "--out", str(run), "--quiet", "--steps", "3"]
    assert main([*base, "--max-minutes", "0"]) == cli.AGAIN_STATUS == 75  # out of time after the first step
    assert load(run / "checkpoints" / "last.pt")["step"] == 1
    out, err = capsys.readouterr()
    assert "stopped segment (tiny) at step 1/3" in out
    assert err.splitlines()[-1] == ("dermagan train: stopped short of its 3 steps, with a checkpoint at step 1; run it "
                                    "again with --resume to continue (exit status 75)")
    assert main([*base, "--resume"]) == 0
    assert load(run / "checkpoints" / "last.pt")["step"] == 3
    assert "--steps 3" in load(run / "checkpoints" / "last.pt")["config"]["recipe"]
    assert "trained segment (tiny) to step 3/3" in capsys.readouterr().out
    assert main([*base, "--resume", "--max-minutes", "0"]) == 0  # already finished: nothing left to run


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_checkpoints_the_step_and_resume_finishes(tmp_path, sig, capsys):
    """A signal during training ends the step with a checkpoint (before, the steps since the last one were lost)."""
    run = tmp_path / "run"
    base = [sys.executable, "-m", "dermagan.cli", "train", "segment", "--preset", "tiny", "--out", str(run), "--quiet",
            "--log-every", "1", "--ckpt-every", "100000"]
    proc = subprocess.Popen([*base, "--steps", "100000"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and len(log.read_text().splitlines()) >= 3):  # training, past its first steps
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    # one trainer a run: a second one (a --resume while it trains) is refused before it writes anything
    assert main([*base[3:], "--resume"]) == 2  # (base[3:]: the same command, in this process)
    assert f"{run} is being trained by another process (pid {proc.pid})" in capsys.readouterr().err
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err  # stopped short, with a checkpoint
    assert f"{sig.name}: stopping after this step with a checkpoint" in err
    assert err.splitlines()[-1].endswith("run it again with --resume to continue (exit status 75)")
    step = load(run / "checkpoints" / "last.pt")["step"]
    assert 3 <= step < 100000 and json.loads(log.read_text().splitlines()[-1])["step"] == step
    done = subprocess.run([*base, "--resume", "--steps", str(step + 2)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert load(run / "checkpoints" / "last.pt")["step"] == step + 2


def test_a_second_trainer_is_refused_and_a_killed_ones_lock_goes_with_it(tmp_path, capsys):
    """Two trainers on one folder both trained, interleaving metrics.jsonl and checkpoints. The one that holds the
    run's flock (here a stand-in process) names its pid to the next; killed, it leaves no lock behind."""
    run = tmp_path / "run"
    base = ["train", "segment", "--preset", "tiny", "--out", str(run), "--quiet"]
    assert main([*base, "--steps", "1"]) == 0
    written = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "train.lock"}
    holder = subprocess.Popen([sys.executable, "-c", "import sys\nfrom dermagan.training.checkpoint import run_lock\n"
                               f"with run_lock({str(run)!r}):\n    print('held', flush=True)\n    sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        capsys.readouterr()
        for again in (["--resume", "--steps", "2"], ["--steps", "2"], ["--resume", "--steps", "1"]):
            assert main([*base, *again]) == 2
            err = capsys.readouterr().err
            assert err == (f"dermagan train: error: {run} is being trained by another process (pid {holder.pid}); "
                           "wait for it to end or stop it (it checkpoints its step, and --resume then continues the "
                           "run), or choose another --out\n"), err
        assert {p: p.read_bytes() for p in written} == written and not (run / "checkpoints" / "step_0000002.pt").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main([*base, "--resume", "--steps", "2"]) == 0
    assert load(run / "checkpoints" / "last.pt")["step"] == 2 and (run / "train.lock").read_text() == ""


def test_a_run_keeps_its_data_absolute_and_a_resume_follows_it_when_moved(paired_folder, tmp_path, capsys,
                                                                          monkeypatch):
    """--data was kept as typed: a --resume from another folder did not find it, nor, once it moved, took the
    --data given (the run's own, which no longer existed, won)."""
    shutil.copytree(paired_folder, tmp_path / "qa" / "paper")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = cli.build_config(_args("segment", "--preset", "tiny", "--data", "qa/paper", "--val-data", "held",
                                 "--init-from", "runs/seg"))
    assert (cfg.data.root, cfg.data.val_root, cfg.init_from) == tuple(str(tmp_path / p) for p in
                                                                       ("qa/paper", "held", "runs/seg"))
    assert "--data qa/paper" in cfg.recipe  # the recipe as typed
    run, old, new = tmp_path / "run", tmp_path / "qa" / "paper", tmp_path / "moved"
    base = ["train", "remove", "--preset", "tiny", "--out", str(run), "--quiet", "--batch-size", "2"]
    assert main([*base, "--data", "qa/paper", "--steps", "1"]) == 0
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main([*base, "--resume", "--steps", "2"]) == 0
    old.rename(new)
    assert main([*base, "--resume", "--steps", "3"]) == 2
    assert (f"the run's data {str(old)!r} does not exist (moved or deleted?); if it moved, pass --data NEW with "
            "--resume to read it from there") in capsys.readouterr().err
    assert main([*base, "--resume", "--steps", "3", "--data", "../nowhere"]) == 2
    assert (f"--data '../nowhere' does not exist, nor does the run's own data {str(old)!r}"
            in capsys.readouterr().err)
    assert main([*base, "--resume", "--steps", "3", "--data", "../moved"]) == 0
    err = capsys.readouterr().err
    assert f"note: the run's data moved: reading {new} instead of {old}" in err and "own data" not in err
    assert load(run / "checkpoints" / "last.pt")["config"]["data"]["root"] == str(new)
    assert main([*base, "--resume", "--steps", "4", "--data", str(old)]) == 0  # its own exists: that one, as before
    assert "keeps the run's own batch_size, data" in capsys.readouterr().err
    # an older run kept the path as typed: it resumes from the folder it started in (and keeps it absolute from then)
    state = load(run / "checkpoints" / "last.pt")
    state["config"]["data"]["root"] = "moved"
    save(run / "checkpoints" / "last.pt", state)
    monkeypatch.chdir(tmp_path)
    assert main([*base, "--resume", "--steps", "5"]) == 0
    assert json.loads((run / "config.json").read_text())["data"]["root"] == str(new)


def test_ctrl_c_before_the_first_step_says_whether_there_is_a_checkpoint_to_resume(tmp_path, capsys, monkeypatch):
    """Ctrl-C while a large procedural set is rendered ahead (minutes) ends in one line, not a DataLoader traceback."""
    from dermagan.training import loop

    run = tmp_path / "run"
    base = ["train", "segment", "--preset", "tiny", "--out", str(run), "--quiet", "--steps", "1"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", interrupted)
    assert main(base) == 130
    assert capsys.readouterr().err == "dermagan train: interrupted before its first checkpoint; nothing to resume\n"
    monkeypatch.undo()
    assert main(base) == 0
    monkeypatch.setattr(loop, "train", interrupted)
    assert main([*base, "--resume", "--steps", "2"]) == 130
    assert capsys.readouterr().err.endswith("dermagan train: interrupted; run it again with --resume to continue from "
                                            "its last checkpoint\n")


def test_resume_with_more_steps_rewrites_the_recipe(tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "segment", "--preset", "tiny", "--out", str(run), "--quiet"]
    assert main([*base, "--steps", "2"]) == 0
    assert main([*base, "--steps", "4", "--resume"]) == 0
    state = load(run / "checkpoints" / "last.pt")
    assert state["step"] == 4 and "--steps 4" in state["config"]["recipe"] and "--steps 2" not in state["config"]["recipe"]
    # fewer steps than the run has made: refused before config.json is rewritten (it said "to step 4/3" and kept 3)
    config = (run / "config.json").read_bytes()
    assert main([*base, "--steps", "3", "--resume"]) == 2
    assert f"--steps 3 is below the step the run in {run} has reached (4); pass --steps 4 or more" in capsys.readouterr().err
    assert (run / "config.json").read_bytes() == config and load(run / "checkpoints" / "last.pt")["step"] == 4


def test_resume_with_more_steps_adds_them_to_a_recipe_that_had_the_presets(tmp_path):
    run = tmp_path / "run"
    base = ["train", "segment", "--preset", "tiny", "--out", str(run), "--quiet"]
    assert main(base) == 0  # the tiny preset's own step count: no --steps in the recipe
    assert "--steps" not in load(run / "checkpoints" / "last.pt")["config"]["recipe"]
    assert main([*base, "--steps", "8", "--resume"]) == 0
    assert load(run / "checkpoints" / "last.pt")["config"]["recipe"].endswith("--steps 8")


@pytest.mark.parametrize("word,value", [("true", True), ("Yes", True), ("1", True), ("false", False), ("no", False)])
def test_true_false_options(word, value):
    assert cli._flag(word) is value


def test_a_misspelt_true_false_option_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "remove", "--preset", "tiny", "--out", str(tmp_path / "r"), "--g-inpaint", "ture"])
    assert "expected true or false" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_a_kept_checkpoint_loads_by_step_and_a_missing_one_names_those_kept(tmp_path):
    from toy_triplets import run_tiny

    run_tiny("segment", tmp_path, steps=6, ckpt_every=3)
    (at3,), (last,) = load_exportables(tmp_path, step=3), load_exportables(tmp_path)
    assert (at3.facts["step"], last.facts["step"]) == (3, 6)
    assert not torch.equal(next(iter(at3.module.state_dict().values())), next(iter(last.module.state_dict().values())))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint kept at step 4 \(kept: 3, 6\)"):
        load_exportables(tmp_path, step=4)


@pytest.mark.parametrize("native", [True, False])
def test_fp32_on_a_native_bf16_cpu_ends_with_a_note(tmp_path, capsys, monkeypatch, native):
    monkeypatch.setattr(cli, "native_bf16", lambda: native)
    base = ["train", "segment", "--preset", "tiny", "--quiet", "--steps", "1"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert ("--amp bf16 may train faster" in capsys.readouterr().err) is native
    assert main([*base, "--out", str(tmp_path / "a"), "--resume"]) == 0  # finished: no step trained, nothing to speed up
    assert main([*base, "--out", str(tmp_path / "a"), "--resume", "--steps", "0"]) == 2  # nor after a refusal
    assert "--amp bf16" not in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b"), "--amp", "none"]) == 0  # asked for: no note
    assert "--amp bf16" not in capsys.readouterr().err


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_native_bf16_warns_before_training(tmp_path, capsys, monkeypatch, native):
    monkeypatch.setattr(cli, "native_bf16", lambda: native)
    base = ["train", "segment", "--preset", "tiny", "--quiet", "--out", str(tmp_path)]
    assert main([*base, "--steps", "1", "--amp", "bf16"]) == 0
    err = capsys.readouterr().err
    assert ("no native bf16" in err and "pass --amp none" in err) is not native
    assert "--resume" not in err
    assert main([*base, "--steps", "2", "--resume"]) == 0  # the run's own bf16, resumed: the way out is named
    err = capsys.readouterr().err
    assert ("pass --amp none with --resume to continue this run in fp32" in err) is not native
    assert main([*base, "--steps", "3", "--resume", "--amp", "none"]) == 0  # fp32 from here on: no warning
    assert "no native bf16" not in capsys.readouterr().err


def test_tensorboard_without_its_package_fails_before_training(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    assert main(["train", "add", "--preset", "tiny", "--tensorboard", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--tensorboard needs the tensorboard package" in err and "pip install tensorboard" in err
    assert not (tmp_path / "run").exists()
