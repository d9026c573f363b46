"""Model cards state the task, the recipe, every target with its result, and the limits."""

from dermagan.manifest import Manifest, ModelEntry, load_manifest, save_manifest, sha256_file
from dermagan.training.cards import write_cards

IMG = {"dtype": "float32", "shape": ["N", 3, "H", "W"]}
MASK = {"dtype": "float32", "shape": ["N", 1, "H", "W"]}


def test_cards_report_targets_and_copy_headline_metrics(tmp_path):
    (tmp_path / "eczema-remove.onnx").write_bytes(b"onnx bytes")
    entry = ModelEntry(name="eczema-remove", task="remove", version="1", file="eczema-remove.onnx",
                       sha256=sha256_file(tmp_path / "eczema-remove.onnx"), resolution=(128, 128),
                       inputs={"image": IMG, "mask": MASK}, outputs={"image": IMG},
                       recipe="dermagan train remove --preset modern --steps 4000", trained_on="synthetic-v1")
    save_manifest(tmp_path, Manifest(models=[entry]))
    doc = {"models": {"eczema-remove": {
        "targets": [{"metric": "inside.psnr", "rule": "inside PSNR > biharmonic", "mean": 25.0, "threshold": 23.0,
                     "result": "pass"},
                    {"metric": "segment.area_reduction", "rule": "area reduced ≥ 80 %", "mean": 0.5,
                     "threshold": 0.8, "result": "miss"}],
        "metrics": {"inside.psnr": {"mean": 25.0, "std": 0.5}}}}}
    [path] = write_cards(tmp_path, load_manifest(tmp_path), doc, "cpu", note="Exported with --weights raw.")
    text = path.read_text()
    assert "dermagan train remove --preset modern --steps 4000" in text
    assert "| inside PSNR > biharmonic | `inside.psnr` | 25 | 23 | **pass** |" in text
    assert "**miss**" in text and "1 of 2 targets met" in text
    assert "Not diagnostic" in text and "--weights raw" in text
    assert "dermagan train remove --preset modern --data YOUR_FOLDER" in text
    assert load_manifest(tmp_path).get("eczema-remove").metrics == {"inside.psnr": 25.0, "segment.area_reduction": 0.5}
