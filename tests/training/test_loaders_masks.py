"""training/data.py: how masks and 16-bit images are read. Masks come as 0/255 white on black (the paper's, the
renderer's), as 0/1 label maps, as coloured strokes, on a transparent overlay, in 16 bits; all mark what they
show (`MASK_RULE`), the 0/255 ones bitwise as before, and a data set whose masks are all empty fails before
training. 16-bit grey images are scaled to 8 bits, not clipped to white."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermagan.cli import main
from dermagan.training.data import MASK_RULE, DataError, ImageFolder, PairedFolder, UnpairedFolder, _load

W, H = 12, 10
#: the strokes every mask below draws (rows 2-5, columns 3-8) and as a bool map
STROKE = np.zeros((H, W), bool)
STROKE[2:6, 3:9] = True


def _save(path: Path, arr: np.ndarray, mode: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(path, **kw)
    return path


def _layout(root: Path, masks: dict[str, Path | np.ndarray]) -> Path:
    """root/image/NAME_image.png + root/patho/NAME_patho.png for each NAME -> mask (an array, or a file to copy)."""
    rng = np.random.default_rng(0)
    for name, mask in masks.items():
        _save(root / "image" / f"{name}_image.png", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        target = root / "patho" / f"{name}_patho.png"
        if isinstance(mask, Path):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(mask.read_bytes())
        else:
            _save(target, mask)
    return root


def _grey(on: int, off: int = 0, dtype=np.uint8) -> np.ndarray:
    return np.where(STROKE, on, off).astype(dtype)


def _rgba(colour: tuple[int, int, int], alpha_on: int = 255, alpha_off: int = 0) -> np.ndarray:
    out = np.zeros((H, W, 4), np.uint8)
    out[STROKE, :3] = colour
    out[..., 3] = np.where(STROKE, alpha_on, alpha_off)
    return out


def _palette(tmp_path: Path, indices: np.ndarray, transparent: int | None = None) -> Path:
    im = Image.fromarray(indices.astype(np.uint8), "L").convert("P")
    im.putpalette([0, 0, 0, 128, 0, 0] + [0, 0, 0] * 254)  # labelme's label.png: 0 black, 1 dark red
    kw = {"transparency": transparent} if transparent is not None else {}
    path = tmp_path / "src" / f"p{transparent}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    return path


def _sixteen(tmp_path: Path, arr: np.ndarray, name: str) -> Path:
    path = tmp_path / "src" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    return path


MASKS = {
    "white_0_255": lambda tmp: _grey(255),
    "label_0_1": lambda tmp: _grey(1),  # the common label PNG: read as empty (> 127) before
    "label_0_2": lambda tmp: _grey(2),
    "dark_grey_76": lambda tmp: _grey(76),  # red strokes flattened to grey
    "red_on_black": lambda tmp: np.stack([_grey(255), _grey(0), _grey(0)], axis=2),
    "blue_on_black": lambda tmp: np.stack([_grey(0), _grey(0), _grey(255)], axis=2),
    "red_on_transparent": lambda tmp: _rgba((255, 0, 0)),  # the reviewer's red.png
    "black_on_transparent": lambda tmp: _rgba((0, 0, 0)),
    "white_on_black_opaque_rgba": lambda tmp: _rgba((255, 255, 255), alpha_off=255),
    "palette_labels": lambda tmp: _palette(tmp, STROKE.astype(np.uint8)),
    "palette_transparent_background": lambda tmp: _palette(tmp, STROKE.astype(np.uint8), transparent=0),
    "sixteen_0_1": lambda tmp: _sixteen(tmp, _grey(1, dtype=np.uint16), "m01"),  # the reviewer's m16.png
    "sixteen_0_65535": lambda tmp: _sixteen(tmp, _grey(65535, dtype=np.uint16), "m65535"),
}


@pytest.mark.parametrize("kind", sorted(MASKS))
def test_every_common_mask_format_marks_its_strokes(tmp_path, kind):
    root = _layout(tmp_path / "data", {"a": MASKS[kind](tmp_path)})
    item = PairedFolder(root)[0]
    assert np.array_equal(item["mask"][0].numpy() == 1, STROKE), kind
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    # resized (nearest) and cut into patches alike; the hand masks (hand/) are read by the same rule
    small = PairedFolder(root, size=(5, 6))[0]["mask"][0].numpy() == 1
    stroke = Image.fromarray(STROKE.astype(np.uint8) * 255).resize((6, 5), Image.Resampling.NEAREST)
    assert np.array_equal(small, np.asarray(stroke) > 127), kind
    hand = _layout(tmp_path / "hand", {"a": _grey(255)})
    (hand / "hand").mkdir()
    (hand / "hand" / "a_hand.png").write_bytes((root / "patho" / "a_patho.png").read_bytes())
    assert np.array_equal(PairedFolder(hand)[0]["hand"][0].numpy() == 1, STROKE), kind


@pytest.mark.parametrize("kind", sorted(MASKS))
def test_the_service_reads_every_mask_as_training_does(tmp_path, kind):
    """One rule (dermagan/masks.py) on both sides of the seam: a mask a model was trained with marks the same
    pixels when it is sent to /eczema/add or /remove (the service answered 0/1 label maps, coloured strokes and
    transparent overlays 422 empty_mask before)."""
    from dermagan.service.imaging import decode_mask

    root = _layout(tmp_path / "data", {"a": MASKS[kind](tmp_path)})
    data = (root / "patho" / "a_patho.png").read_bytes()
    served = decode_mask(data, size=(H, W), max_pixels=1 << 20)
    assert np.array_equal(served, _load(root / "patho" / "a_patho.png", "mask", None) > 127), kind
    assert np.array_equal(served, STROKE), kind


def test_white_on_black_masks_read_bitwise_as_before(tmp_path):
    """0/255 masks with grey anti-aliased edges, resized and cropped: exactly `> 127` of the grey, as the
    renderer's masks, the Memo cache ({0, 1}) and the models trained so far had them."""
    rng = np.random.default_rng(1)
    soft = rng.integers(0, 256, (H, W)).astype(np.uint8)
    soft[0, 0] = 255  # values above half: read by threshold, as before
    rgb = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)  # an RGB mask: its grey, as before, wherever grey
    rgb[..., 1] = rgb[..., 2] = rgb[..., 0]
    rgb[0, 0] = 255
    root = _layout(tmp_path / "d", {"soft": soft, "rgb": rgb})
    for size, fit in ((None, ""), ((5, 6), ""), ((7, 7), "crop"), ((16, 20), "")):
        for name in ("rgb", "soft"):
            path = root / "patho" / f"{name}_patho.png"
            old = Image.open(path).convert("L")
            if size is not None:
                from PIL import ImageOps
                nearest = Image.Resampling.NEAREST
                old = ImageOps.fit(old, size[::-1], nearest) if fit == "crop" else old.resize(size[::-1], nearest)
            assert np.array_equal(_load(path, "mask", size, fit=fit) > 127, np.asarray(old) > 127), (name, size, fit)


def test_the_committed_procedural_samples_read_bitwise():
    fixtures = Path(__file__).parent.parent / "fixtures" / "synth" / "eczema"
    ds = PairedFolder(fixtures)
    for i, (name, item, _) in enumerate(ds.items):
        raw = np.asarray(Image.open(item["patho"]))
        assert set(np.unique(raw).tolist()) <= {0, 255}
        assert np.array_equal(ds[i]["mask"][0].numpy() * 255, raw), name


def test_the_rule_is_decided_on_the_whole_file_not_on_each_patch(tmp_path):
    """A 0/255 mask's anti-aliased edge (values <= 127) stays unmarked in a patch that holds only the edge: the
    rule is decided on the whole file, not on each patch."""
    mask = np.zeros((32, 32), np.uint8)
    mask[:4, :4] = 255
    mask[20:, 20:] = 60  # a faint edge far from the stroke
    root = _layout(tmp_path / "d", {})
    rng = np.random.default_rng(0)
    _save(root / "image" / "a_image.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    _save(root / "patho" / "a_patho.png", mask)
    ds = PairedFolder(root, size=16, patches_from=32)
    marked = {n: float(ds[i]["mask"].sum()) for i, (n, *_) in enumerate(ds.items)}
    assert marked["a@0,0"] == 16 and marked["a@16,16"] == 0


def test_masks_all_empty_fail_before_training_naming_the_folder_and_the_rule(tmp_path, capsys):
    empty = _layout(tmp_path / "empty", {n: _grey(0) for n in ("a", "b", "c")})
    with pytest.raises(DataError) as e:
        PairedFolder(empty)
    assert str(e.value).startswith(f"{empty / 'patho'}: every mask is empty") and MASK_RULE in str(e.value)
    with pytest.raises(DataError, match="every mask is empty"):
        PairedFolder(empty, size=8, patches_from=10)
    with pytest.raises(DataError, match="every mask is empty") as e:
        UnpairedFolder(empty)
    assert MASK_RULE in str(e.value)
    # one marked mask anywhere is enough, whatever its name
    for name in ("a", "c"):
        _save(empty / "patho" / f"{name}_patho.png", _grey(1))
        assert len(PairedFolder(empty)) == 3
        _save(empty / "patho" / f"{name}_patho.png", _grey(0))
    # the command line: segment fails before its first step, and says why
    assert main(["train", "segment", "--preset", "tiny", "--size", "32", "--data", str(empty),
                 "--out", str(tmp_path / "run"), "--steps", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{empty / 'patho'}: every mask is empty" in err and "0/1 label map" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unpaired_folder_sorts_label_maps_and_overlays_into_eczema(tmp_path):
    root = _layout(tmp_path / "d", {"e01": _grey(1), "ered": _rgba((255, 0, 0)), "skin": _grey(0),
                                    "clear": np.zeros((H, W, 4), np.uint8)})  # a fully transparent overlay: healthy
    ds = UnpairedFolder(root)
    assert [n for n, *_ in ds.eczema] == ["e01", "ered"] and [n for n, *_ in ds.healthy] == ["clear", "skin"]
    assert np.array_equal(ds.load_eczema(0)["mask"][0].numpy() == 1, STROKE)


def test_sixteen_bit_grey_images_are_scaled_not_clipped(tmp_path):
    """A 0..65535 gradient: value >> 8 (the service's decoding), not 99.6 % white."""
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (8, 1))
    path = _sixteen(tmp_path, ramp, "ramp")
    rgb = _load(path, "RGB", None)
    assert rgb.shape == (8, 64, 3) and np.array_equal(rgb[..., 0], (ramp >> 8).astype(np.uint8))
    assert np.array_equal(rgb[..., 0], rgb[..., 2]) and abs(rgb.mean() - 127.5) < 1 and (rgb == 255).mean() < 0.05
    folder = tmp_path / "flat"
    folder.mkdir()
    (folder / "ramp.png").write_bytes(path.read_bytes())
    image = ImageFolder(folder, size=(8, 64))[0]["image"]
    assert abs(float(image.mean())) < 0.01  # the mid-grey of [-1, 1], not white (1)
    # the same gradient as a mask: a 16-bit mask's half is 32767 (as > 127 of an 8-bit one)
    assert np.array_equal(_load(path, "mask", None) > 127, ramp > 32767)
    # 32-bit integer grey (mode I) alike
    wide = tmp_path / "src" / "ramp32.tif"
    Image.fromarray(ramp.astype(np.int32)).save(wide)
    assert Image.open(wide).mode == "I" and np.array_equal(_load(wide, "RGB", None)[..., 1], (ramp >> 8).astype(np.uint8))
