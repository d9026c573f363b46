"""TrainConfig.validate's ranges: every count, rate and label out of range fails before training, as one
`dermagan train: error:` line naming the option (they used to fail at step 1, raise a raw RuntimeError, or
train a model that export refuses)."""

import pytest

from dermagan.cli import main
from dermagan.training.config import FAMILIES, PRESETS, preset


@pytest.mark.parametrize("argv,message", [
    (["segment", "--ngf", "0"], "--ngf must be >= 1, got 0"),
    (["add", "--ndf", "0"], "--ndf must be >= 1, got 0"),
    (["generate", "--z-dim", "0"], "--z-dim must be >= 1, got 0"),
    (["cycle", "--pool-size", "-2"], "--pool-size must be >= 0 (0 = off), got -2"),
    (["generate", "--kinds", "eczema,hand,eczema"], "--kinds names 'eczema' more than once"),
    (["add", "--real-label", "5"], "--real-label must be within (0, 1]"),
    (["add", "--real-label", "0"], "--real-label must be within (0, 1]"),
    (["cycle", "--g-blocks", "-1"], "--g-blocks must be >= 0, got -1"),
    (["segment", "--g-unet-downs", "-1"], "--g-unet-downs must be >= 2"),
    (["add", "--generator", "unet", "--g-unet-downs", "1"], "--g-unet-downs must be >= 2"),
    (["segment", "--workers", "-1"], "--workers must be >= 0, got -1"),
    (["segment", "--cache-gb", "-1"], "--cache-gb must be a number of GB >= 0 (0 = never cache), got -1"),
    (["segment", "--cache-gb", "nan"], "--cache-gb must be a number of GB >= 0 (0 = never cache), got nan"),
    (["generate", "--length", "0"], "--length must be >= 1, got 0"),
    (["add", "--lr-g", "-1"], "--lr-g must be > 0"),
    (["add", "--lr-d", "0"], "--lr-d must be > 0"),
    (["add", "--beta1", "1"], "--beta1 must be within [0, 1)"),
    (["add", "--ema", "1"], "--ema must be within [0, 1) (0 = off)"),
    (["add", "--r1-gamma", "-1"], "--r1-gamma must be >= 0 (0 = off)"),
    (["generate", "--kinds", "hand", "--d-pack", "0"], "--d-pack must be >= 1 (1 = off), got 0"),
    (["generate", "--kinds", "hand", "--d-pack", "3"], "--batch-size 4 is not a multiple of --d-pack 3"),
    (["generate", "--d-pack", "2"], "--d-pack 2 needs one kind (the samples of a pack must share theirs), got eczema, hand"),
    (["add", "--d-pack", "2"], "--d-pack 2: packing is for generate's two-scale discriminator (this run: add, patch)"),
    (["generate", "--d-mbstd", "0", "--d-mbstd-colour", "1"],
     "--d-mbstd-colour is for generate's two-scale discriminator with its minibatch stddev (this run: generate, "
     "two_scale, --d-mbstd 0)"),
    (["cycle", "--d-mbstd-colour", "2"], "--d-mbstd-colour is for generate's two-scale discriminator"),
    (["generate", "--d-mbstd-colour", "-1"], "--d-mbstd-colour must be >= 0 (0 = off), got -1"),
    (["generate", "--attention", "-1"], "--attention must be >= 0 (0 = off), got -1"),
    (["generate", "--attention", "8"], "--attention 8: at 32 px the feature maps that take it are 16 px (0 = off)"),
    (["generate", "--size", "128", "--attention", "128"],
     "--attention 128: at 128 px the feature maps that take it are 64, 32, 16 px (0 = off)"),
    (["cycle", "--attention", "16"], "--attention is for generate's generator and two-scale discriminator (this run: "
     "cycle, patch); leave it 0"),
    (["generate", "--g-seed-ch", "-1"], "--g-seed-ch must be >= 0 (0 = ngf), got -1"),
    (["cycle", "--g-seed-ch", "64"], "--g-seed-ch is for generate's generator (this run: cycle); leave it 0"),
    (["add", "--size", "64", "--crop", "32", "--disc", "two_scale"],
     "--crop 32 needs a discriminator that takes any size: the two-scale one (--disc two_scale"),  # crashed at step 1
])
def test_out_of_range_options_fail_before_training_naming_the_option(argv, message, tmp_path, capsys):
    assert main(["train", *argv, "--preset", "tiny", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dermagan train: error:") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()  # not even config.json


def test_every_preset_passes_its_own_validation():
    for name in PRESETS:
        for family in FAMILIES:
            preset(name, family).validate()
