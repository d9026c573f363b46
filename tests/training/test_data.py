"""training/data.py: the datasets, and the DataError each kind of bad data gives."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dermagan.training.data import (ClassFolder, DataError, ImageFolder, LabelCsv, PairedFolder, SynthDataset, UnpairedFolder,
                                    label_csvs)
from dermagan.training.synth import render


def _png(path: Path, size=(12, 10), mode="RGB", value=100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)
    return path


def _paired(root: Path, names=("a", "b"), size=(12, 10)) -> Path:
    for n in names:
        _png(root / "image" / f"{n}_image.png", size)
        _png(root / "patho" / f"{n}_patho.png", size, "L", 255)
    return root


# -- the good paths ----------------------------------------------------------------------------


def test_synth_dataset_renders_sample_i_deterministically():
    ds = SynthDataset("eczema", 32, length=5, seed=100, grade=2)
    a, b = ds[3], ds[3]
    assert torch.equal(a["image"], b["image"]) and a["name"] == "eczema_00000103"
    s = render("eczema", 103, 32, grade=2)
    assert torch.equal(a["image"], torch.from_numpy(s.image.transpose(2, 0, 1)).float() / 127.5 - 1)
    assert a["image"].dtype == torch.float32 and -1 <= a["image"].min() and a["image"].max() <= 1
    assert set(a) == {"image", "mask", "healthy", "label", "name"} and a["label"].dtype == torch.int64
    assert set(a["mask"].unique().tolist()) <= {0.0, 1.0}
    assert len(ds) == 5 and not torch.equal(ds[0]["image"], ds[1]["image"])
    with pytest.raises(IndexError):
        ds[5]


def test_synth_dataset_lesion_and_multi_kind_labels():
    les = SynthDataset("lesion", 32, length=4, label="MEL")
    assert les.classes == ("NV", "MEL") and int(les[0]["label"]) == 1
    multi = SynthDataset(("eczema", "hand", "lesion"), 32, length=6)
    assert multi.classes == ("eczema", "hand", "lesion")
    assert [int(multi[i]["label"]) for i in range(3)] == [0, 1, 2] and set(multi[1]) == {"image", "label", "name"}
    with pytest.raises(ValueError, match="valid"):
        SynthDataset("eczema", 32, 4, colour="red")


def test_paired_folder_resizes_and_binarises(tmp_path):
    root = _paired(tmp_path)
    _png(root / "healthy" / "a_image.png")
    _png(root / "healthy" / "b_image.png")
    ds = PairedFolder(root, size=8)
    item = ds[0]
    assert item["name"] == "a" and item["image"].shape == (3, 8, 8) and item["healthy"].shape == (3, 8, 8)
    assert item["mask"].shape == (1, 8, 8) and torch.all(item["mask"] == 1)
    assert PairedFolder(root)[1]["image"].shape == (3, 10, 12)  # no size: as stored (H, W)


def test_unpaired_folder_pools_eczema_and_healthy_skin(tmp_path):
    """Real photographs: eczema = images whose mask marks a pixel; healthy = empty masks + healthy/ (any name)."""
    root = _paired(tmp_path, names=("e1", "e2"))
    _png(root / "image" / "skin_image.jpg", value=40)
    _png(root / "patho" / "skin_patho.png", mode="L", value=0)  # an empty mask: a healthy patch
    _png(root / "patho" / "e2_patho.png", mode="L", value=128)  # > 127 counts as eczema
    for n in ("h1", "h2", "h3"):
        _png(root / "healthy" / f"{n}.png", value=200)  # no image/ file of these names
    ds = UnpairedFolder(root, size=8)
    assert [n for n, *_ in ds.eczema] == ["e1", "e2"] and [n for n, *_ in ds.healthy] == ["skin", "h1", "h2", "h3"]
    assert len(ds) == 4  # max(eczema, healthy): every healthy file once an epoch
    names = [ds[i]["name"] for i in range(len(ds))]
    assert names == ["e1+skin", "e2+h1", "e1+h2", "e2+h3"]
    item = ds[0]
    assert set(item) == {"image", "mask", "healthy", "name"} and item["healthy"].shape == (3, 8, 8)
    assert torch.all(item["mask"] == 1) and torch.allclose(item["healthy"], torch.full((3, 8, 8), 40 / 127.5 - 1))
    with pytest.raises(IndexError):
        ds[4]


@pytest.mark.parametrize(
    "healthy_mask,healthy_dir,expected",
    [(255, False, r"no healthy skin: every mask in patho/ marks eczema and there is no healthy/ folder"),
     (0, False, 1), (255, True, 2)],
)
def test_unpaired_folder_needs_both_domains(tmp_path, healthy_mask, healthy_dir, expected):
    root = _paired(tmp_path, names=("a",))
    _png(root / "image" / "b_image.png")
    _png(root / "patho" / "b_patho.png", mode="L", value=healthy_mask)
    if healthy_dir:
        _png(root / "healthy" / "other.png")
    if isinstance(expected, str):
        with pytest.raises(DataError, match=expected):
            UnpairedFolder(root)
    else:
        assert len(UnpairedFolder(root)) == expected  # (eczema, healthy): (1, 1) or (2, 1)


def test_unpaired_folder_without_eczema_or_with_mismatched_sizes(tmp_path):
    root = _paired(tmp_path, names=("a",))
    _png(root / "patho" / "a_patho.png", mode="L", value=0)
    _png(root / "healthy" / "h.png")
    with pytest.raises(DataError, match=r"patho: every mask is empty, so there is no eczema"):
        UnpairedFolder(root)
    _png(root / "patho" / "a_patho.png", mode="L", value=255)
    _png(root / "healthy" / "h.png", size=(20, 20))
    with pytest.raises(DataError, match=r"h\.png: size \(20, 20\) differs from a_image\.png"):
        UnpairedFolder(root)  # without size= every image must share one size
    assert UnpairedFolder(root, size=8)[0]["healthy"].shape == (3, 8, 8)


def test_patches_are_cut_at_half_stride_from_each_image_at_its_scale(tmp_path):
    """The paper's patches: each image resized to a shorter side of 30, cut into 16 px patches every 8 px,
    the last flush with the border (30 -> 0, 8, 14; 40 -> 0, 8, 16, 24); a mask's patch is its image's."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for n, (w, h) in (("a", (40, 30)), ("b", (80, 60))):  # b is shrunk to 40 x 30 first
        (root / "image").mkdir(parents=True, exist_ok=True)
        (root / "patho").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(root / "image" / f"{n}_image.png")
        Image.fromarray((rng.random((h, w)) > 0.5).astype(np.uint8) * 255).save(root / "patho" / f"{n}_patho.png")
    ds = PairedFolder(root, size=16, patches_from=30)
    assert len(ds) == 2 * 12 and ds[0]["image"].shape == (3, 16, 16) and ds[0]["mask"].shape == (1, 16, 16)
    assert [ds[i]["name"] for i in (0, 3, 4, 11)] == ["a@0,0", "a@0,24", "a@8,0", "a@14,24"]
    whole = PairedFolder(root, size=(30, 40))[1]  # b at the patches' scale
    assert torch.equal(ds[12 + 5]["image"], whole["image"][:, 8:24, 8:24])  # b@8,8
    assert torch.equal(ds[12 + 5]["mask"], whole["mask"][:, 8:24, 8:24])


def test_patches_on_the_hand_and_sorted_into_eczema_and_healthy(tmp_path):
    root = tmp_path / "photos"
    _png(root / "image" / "a_image.png", (40, 30))
    mask = np.zeros((30, 40), np.uint8)
    mask[2:5, 30:33] = 255  # eczema in the top right corner
    _png(root / "patho" / "a_patho.png", (40, 30), "L", 0)
    Image.fromarray(mask).save(root / "patho" / "a_patho.png")
    unpaired = UnpairedFolder(root, size=16, patches_from=30)
    assert sorted(n for n, *_ in unpaired.eczema) == ["a@0,16", "a@0,24"] and len(unpaired.healthy) == 10
    hand = np.zeros((30, 40), np.uint8)
    hand[:, :12] = 255  # a hand over the left 12 columns: patches at x = 0 are 12/16 on it, x = 8 4/16
    Image.fromarray(hand).save(_png(root / "hand" / "a_hand.png", (40, 30), "L"))
    assert [ds_name for ds_name, *_ in PairedFolder(root, size=16, patches_from=30).items] == ["a@0,0", "a@8,0", "a@14,0"]
    unpaired = UnpairedFolder(root, size=16, patches_from=30)  # eczema patches stay; healthy ones must be on the hand
    assert len(unpaired.eczema) == 2 and [n for n, *_ in unpaired.healthy] == ["a@0,0", "a@8,0", "a@14,0"]
    with pytest.raises(DataError, match=r"square size at most the shorter side"):
        PairedFolder(root, size=16, patches_from=12)


def test_exif_rotated_photographs_are_read_as_shown(tmp_path):
    """A phone's JPEG stores its pixels sideways with an EXIF orientation; its mask (drawn on the photograph
    as shown) has the shown size. The loaders turn the pixels as the service does, so the two agree."""
    root = tmp_path / "photos"
    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high as stored
    stored[:, :10] = 250  # a bright band on the stored left, i.e. at the top once turned 90 degrees clockwise
    (root / "image").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    Image.fromarray(stored).save(root / "image" / "a_image.jpg", quality=95, exif=exif.tobytes())
    _png(root / "patho" / "a_patho.png", (20, 40), "L", 255)  # shown: 20 wide, 40 high
    item = PairedFolder(root)[0]
    assert item["image"].shape == (3, 40, 20) and item["mask"].shape == (1, 40, 20)
    rows = item["image"].mean(dim=(0, 2))
    assert rows[:8].min() > 0.8 and rows[12:].max() < -0.8  # the band is on top
    patch = PairedFolder(root, size=16, patches_from=20)[0]  # drafted (reduced-scale) decoding, turned too
    assert patch["image"][:, :8].mean() > 0.8 and patch["image"][:, 12:].mean() < -0.8


def test_photographs_are_read_in_srgb_as_the_service_decodes_them(tmp_path):
    """A Display P3 photograph (a phone's) trains on the colours the service will serve it in."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "service"))
    from sample_images import display_p3_icc

    from dermagan.service import imaging

    rgb = np.random.default_rng(3).integers(0, 256, (10, 12, 3), np.uint8)
    path = tmp_path / "dom" / "p3.png"
    path.parent.mkdir()
    Image.fromarray(rgb).save(path, icc_profile=display_p3_icc())
    served = imaging.decode_image(path.read_bytes(), max_pixels=1000).rgb
    assert not np.array_equal(served, rgb)
    assert torch.equal(ImageFolder(path.parent)[0]["image"], torch.from_numpy(served.transpose(2, 0, 1).copy()).float() / 127.5 - 1)


def test_heic_photographs_are_read(tmp_path):
    pytest.importorskip("pillow_heif")
    path = tmp_path / "dom" / "IMG_0001.HEIC"
    path.parent.mkdir()
    Image.fromarray(np.full((16, 24, 3), (200, 60, 60), np.uint8)).save(path, format="HEIF", quality=95)
    item = ImageFolder(path.parent, size=8)[0]
    assert item["name"] == "IMG_0001" and item["image"].shape == (3, 8, 8)
    assert abs(float(item["image"][0].mean()) - (200 / 127.5 - 1)) < 0.05


def test_image_folder_and_class_folder(tmp_path):
    _png(tmp_path / "dom" / "x.png")
    _png(tmp_path / "dom" / "y.jpg")
    (tmp_path / "dom" / "notes.txt").write_text("ignored")
    assert [ImageFolder(tmp_path / "dom")[i]["name"] for i in range(2)] == ["x", "y"]
    _png(tmp_path / "isic" / "NV" / "n1.png")
    _png(tmp_path / "isic" / "MEL" / "m1.png")
    ds = ClassFolder(tmp_path / "isic", size=(6, 4))
    assert ds.classes == ("MEL", "NV") and ds[0]["image"].shape == (3, 6, 4) and int(ds[1]["label"]) == 1


def test_ham10000_csv(tmp_path):
    _png(tmp_path / "part_1" / "ISIC_0001.jpg")
    _png(tmp_path / "part_2" / "ISIC_0002.jpg")
    csv = tmp_path / "HAM10000_metadata.csv"
    csv.write_text("lesion_id,image_id,dx,dx_type\nL1,ISIC_0001,nv,histo\nL2,ISIC_0002,mel,histo\n")
    ds = LabelCsv(tmp_path, csv, size=8)
    assert ds.classes == ("MEL", "NV") and len(ds) == 2
    assert int(ds[0]["label"]) == 1 and ds[0]["name"] == "ISIC_0001" and ds[1]["image"].shape == (3, 8, 8)


def test_isic_one_hot_ground_truth_csv(tmp_path):
    """ISIC 2019's ISIC_2019_Training_GroundTruth.csv: image + a 0/1 column per class; UNK is never set."""
    for n in ("ISIC_0001", "ISIC_0002", "ISIC_0003_downsampled"):
        _png(tmp_path / "ISIC_2019_Training_Input" / f"{n}.jpg")
    truth = tmp_path / "ISIC_2019_Training_GroundTruth.csv"
    truth.write_text("image,MEL,NV,BCC,UNK\nISIC_0001,0.0,1.0,0.0,0.0\nISIC_0002,1.0,0.0,0.0,0.0\n"
                     "ISIC_0003_downsampled,0.0,0.0,1.0,0.0\n")
    (tmp_path / "ISIC_2019_Training_Metadata.csv").write_text("image,age_approx,sex\nISIC_0001,55.0,male\n")
    assert label_csvs(tmp_path) == [truth]  # the metadata CSV is not a labels CSV
    ds = LabelCsv(tmp_path, truth)
    assert ds.classes == ("BCC", "MEL", "NV") and [int(ds[i]["label"]) for i in range(3)] == [2, 1, 0]
    truth.write_text("image,MEL,NV\nISIC_0001,1.0,1.0\nISIC_0002,0.0,0.0\n")
    with pytest.raises(DataError, match=r"line 2: 'ISIC_0001' is in 2 classes \(MEL, NV\)"):
        LabelCsv(tmp_path, truth)
    truth.write_text("image,MEL,NV\nISIC_0001,0.0,1.0\nISIC_0002,0.0,0.0\n")
    with pytest.raises(DataError, match=r"line 3: no class for 'ISIC_0002' \(no class column is 1\)"):
        LabelCsv(tmp_path, truth)


# -- bad data: each case names the file and the problem ------------------------------------------


def test_unreadable_image(tmp_path):
    root = _paired(tmp_path)
    (root / "image" / "a_image.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"a_image\.png: unreadable image"):
        PairedFolder(root)


def test_truncated_image_fails_when_loaded(tmp_path):
    path = _png(tmp_path / "dom" / "big.png", size=(64, 64))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])  # the header survives, the pixels do not
    ds = ImageFolder(tmp_path / "dom")
    with pytest.raises(DataError, match=r"big\.png: unreadable image"):
        ds[0]


def test_mask_missing_for_an_image(tmp_path):
    root = _paired(tmp_path)
    (root / "patho" / "b_patho.png").unlink()
    with pytest.raises(DataError, match=r"b_image\.png: no patho file .*b_patho"):
        PairedFolder(root)


def test_every_image_without_its_mask_is_named_in_one_error(tmp_path):
    root = _paired(tmp_path)
    for name in ("c", "d"):
        _png(root / "image" / f"{name}_image.png", (12, 10))
    (root / "patho" / "b_patho.png").unlink()
    with pytest.raises(DataError, match=r"b_image\.png: no patho file for it \(expected .*b_patho\.png, or b\.png; "
                       r"any image extension\); 3 of the 4 images have none: b_image\.png, c_image\.png, d_image\.png$"):
        PairedFolder(root)


def test_mask_of_another_size(tmp_path):
    root = _paired(tmp_path)
    _png(root / "patho" / "a_patho.png", (11, 10), "L")
    with pytest.raises(DataError, match=r"a_patho\.png: size \(11, 10\) differs from its image a_image\.png \(12, 10\)"):
        PairedFolder(root)


def test_hand_mask_missing_when_hand_folder_exists(tmp_path):
    root = _paired(tmp_path)
    _png(root / "hand" / "a_hand.png", mode="L")
    with pytest.raises(DataError, match=r"b_image\.png: no hand file"):
        PairedFolder(root)


@pytest.mark.parametrize(
    "make,build,message",
    [
        (lambda r: (r / "image").mkdir(parents=True) or (r / "patho").mkdir(), PairedFolder, r"image: empty folder"),
        (lambda r: r.mkdir(), ImageFolder, r"empty folder"),
        (lambda r: r.mkdir(), ClassFolder, r"empty folder \(expected one sub-folder"),
        (lambda r: (r / "NV").mkdir(parents=True), ClassFolder, r"NV: empty folder \(class 'NV' has no images\)"),
        (lambda r: None, ImageFolder, r"no such folder"),
        (lambda r: (r / "image").mkdir(parents=True), PairedFolder, r"patho: no such folder"),
    ],
)
def test_empty_or_missing_folders(tmp_path, make, build, message):
    root = tmp_path / "root"
    make(root)
    with pytest.raises(DataError, match=message):
        build(root)


def test_labels_csv_unknown_columns_and_missing_images(tmp_path):
    _png(tmp_path / "imgs" / "ISIC_0001.jpg")
    bad_cols = tmp_path / "a.csv"
    bad_cols.write_text("id,diagnosis\nISIC_0001,nv\n")
    with pytest.raises(DataError, match=r"a\.csv: unknown CSV columns \['id', 'diagnosis'\]; needs image_id and dx"):
        LabelCsv(tmp_path / "imgs", bad_cols)
    missing = tmp_path / "b.csv"
    missing.write_text("image_id,dx\nISIC_0001,nv\nISIC_0009,mel\n")
    with pytest.raises(DataError, match=r"b\.csv: line 3: image 'ISIC_0009' not found"):
        LabelCsv(tmp_path / "imgs", missing)
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        LabelCsv(tmp_path / "imgs", tmp_path / "nope.csv")
    missing.write_text("image_id,dx\nISIC_0001,\n")
    with pytest.raises(DataError, match=r"b\.csv: line 2: no class for 'ISIC_0001' \(empty dx\)"):
        LabelCsv(tmp_path / "imgs", missing)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


def test_synth_dataset_batches_through_a_data_loader():
    from torch.utils.data import DataLoader

    batch = next(iter(DataLoader(SynthDataset("hand", 32, length=4, seed=1), batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["hand"].shape == (4, 1, 32, 32)
    assert batch["label"].shape == (4,) and len(batch["name"]) == 4


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "synth"


@pytest.mark.parametrize("kind", ["eczema", "hand"])
def test_fixed_samples_load_and_keep_the_triplet_property(kind):
    """The committed samples read back through PairedFolder; outside each mask, dilated by the
    radius recorded in meta.jsonl, eczema and healthy pixels are equal."""
    import json

    from scipy import ndimage

    ds = PairedFolder(FIXTURES / kind)
    meta = {m["name"]: m for m in map(json.loads, (FIXTURES / kind / "meta.jsonl").read_text().splitlines())}
    assert len(ds) == len(meta) >= 4
    for i in range(len(ds)):
        item = ds[i]
        mask = item["mask"][0].numpy() > 0.5
        outside = ndimage.distance_transform_edt(~mask) > meta[item["name"]]["eczema"]["dilation_px"]
        assert torch.equal(item["image"][:, outside], item["healthy"][:, outside])
        assert mask.any() == (meta[item["name"]]["grade"] > 0)
        if kind == "hand":
            assert not (mask & (item["hand"][0].numpy() == 0)).any()


def test_fixed_lesions_load_as_classes():
    ds = ClassFolder(FIXTURES / "lesion")
    assert ds.classes == ("MEL", "NV") and len(ds) == 6


def test_mixed_image_sizes_need_a_target_size(tmp_path):
    _png(tmp_path / "dom" / "a.png", (12, 10))
    _png(tmp_path / "dom" / "b.png", (20, 10))
    with pytest.raises(DataError, match=r"b\.png: size \(20, 10\) differs from a\.png \(12, 10\); pass size="):
        ImageFolder(tmp_path / "dom")
    assert ImageFolder(tmp_path / "dom", size=8)[1]["image"].shape == (3, 8, 8)


# -- photographs of another shape than the training size: squash (warned) or crop --------------

def _banded(path: Path, size=(60, 45)) -> Path:
    """A 4:3 photograph: red on the left and blue on the right eighth, green between (a centred
    square crop holds only green)."""
    w, h = size
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, :, 1] = 200
    rgb[:, : w // 8] = (255, 0, 0)
    rgb[:, w - w // 8:] = (0, 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dermagan.training" and r.levelname == "WARNING"]


def test_photographs_of_another_shape_are_squashed_with_a_warning_or_cropped(tmp_path, caplog):
    caplog.set_level("WARNING", logger="dermagan.training")
    for name in ("a", "b"):
        _banded(tmp_path / "lesions" / "NV" / f"{name}.png")
    _png(tmp_path / "lesions" / "MEL" / "square.png", (45, 45))
    squashed = ClassFolder(tmp_path / "lesions", size=16)
    (message,) = _warnings(caplog)
    assert "2 of the 3 images of" in message and "(e.g. a.png, 60x45)" in message
    assert "--fit crop" in message and "--patches SHORT_PX" in message and "--fit squash" in message
    edges = squashed[1]["image"][:, :, [0, -1]]  # NV/a: its left and right columns
    assert edges[0, :, 0].min() > 0.9 and edges[2, :, 1].min() > 0.9  # red on the left, blue on the right: all there

    caplog.clear()
    for fit in ("squash", "crop"):
        ds = ClassFolder(tmp_path / "lesions", size=16, fit=fit)
        assert ds[1]["image"].shape == (3, 16, 16)
    assert _warnings(caplog) == []
    cropped = ClassFolder(tmp_path / "lesions", size=16, fit="crop")[1]["image"]
    # the centred square is green; only the resampling kernel reaches the bands, at its outer columns
    assert torch.allclose(cropped[:, :, 2:-2], torch.tensor([-1, 200 / 127.5 - 1, -1])[:, None, None].expand(3, 16, 12),
                          atol=0.02)
    assert cropped[0, :, 0].max() < 0 and cropped[2, :, -1].max() < 0
    with pytest.raises(DataError, match="fit must be squash or crop"):
        ImageFolder(tmp_path / "lesions" / "NV", size=16, fit="stretch")


def test_cropping_a_paired_photograph_keeps_its_mask_in_register(tmp_path, caplog):
    caplog.set_level("WARNING", logger="dermagan.training")
    root = tmp_path / "photos"
    _banded(root / "image" / "p_image.png", (61, 45))  # the centred square: columns 8 to 52
    mask = np.zeros((45, 61), np.uint8)
    mask[:, 52:] = 255  # the blue band and the square's last column
    mask[10:20, 20:30] = 255  # a patch of eczema inside it
    (root / "patho").mkdir()
    Image.fromarray(mask).save(root / "patho" / "p_patho.png")
    item = PairedFolder(root, size=45, fit="crop")[0]
    assert np.array_equal(item["mask"][0].numpy() > 0.5, mask[:, 8:53] > 127) and _warnings(caplog) == []
    image = np.asarray(Image.open(root / "image" / "p_image.png"))[:, 8:53]
    assert np.array_equal(((item["image"].numpy().transpose(1, 2, 0) + 1) * 127.5).round(), image)
    assert len(PairedFolder(root, size=32, patches_from=45)) == 6  # patches keep the shape: no warning either
    assert _warnings(caplog) == []
    PairedFolder(root, size=32)
    assert len(_warnings(caplog)) == 1
