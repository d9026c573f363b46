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
    [path] = write_cards(tmp_path, doc, "cpu", note="Exported with --weights raw.")
    text = path.read_text()
    assert "dermagan train remove --preset modern --steps 4000" in text
    assert "| inside PSNR > biharmonic | `inside.psnr` | 25 | 23 | **pass** |" in text
    assert "**miss**" in text and "1 of 2 targets met" in text
    assert "Not diagnostic" in text and "--weights raw" in text
    assert "dermagan train remove --preset modern --data YOUR_FOLDER" in text
    assert load_manifest(tmp_path).get("eczema-remove").metrics == {"inside.psnr": 25.0, "segment.area_reduction": 0.5}


def test_a_model_without_targets_shows_all_its_metrics_as_headline():
    from dermagan.training.cards import headline

    result = {"targets": [], "metrics": {"eczema.iou": {"mean": 0.84, "std": 0.004},
                                         "eczema.dice": {"mean": 0.91, "std": 0.004},
                                         "broken": {"mean": float("nan"), "std": 0.0}}}
    assert headline(result) == {"eczema.iou": 0.84, "eczema.dice": 0.91}  # the segmenter's, not {}
    assert headline(None) == {}


def test_release_notes_say_how_far_each_run_got(tmp_path):
    import json

    from dermagan.training.release import SHIPPED, progress_notes

    for run, step, steps in (("add", 3000, 3000), ("cycle", 9000, 9000), ("cycle-tune", 3000, 3000),
                             ("cycle-final", 1200, 2000)):
        d = tmp_path / run
        (d / "checkpoints").mkdir(parents=True)
        (d / "checkpoints" / "last.pt").write_bytes(b"")
        history = [{"step": 1000, "steps_before": 1500, "steps": 2000}] if run == "cycle-final" else []
        (d / "config.json").write_text(json.dumps({"steps": steps, "history": history, "recipe": f"dermagan train {run}"}))
        (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(10, step + 1, 10)))
    notes = progress_notes(list(SHIPPED["cpu"]), tmp_path)
    assert notes["eczema-add"] == "Its run completed the recipe's 3000 optimiser steps."
    assert "stopped at step 1200 of the recipe's 2000" in notes["cycle-add"] and notes["cycle-remove"] == notes["cycle-add"]
    assert "resumed at step 1000 with its schedule changed from 1500 to 2000 steps" in notes["cycle-add"]
    # the whole chain of stages it starts from, nearest first, each with its recipe
    tune = notes["cycle-add"].index("started from the networks of the recipe's run `cycle-tune` (3000 steps)")
    first = notes["cycle-add"].index("That run started from the networks of the recipe's run `cycle` (9000 steps)")
    assert tune < first and "dermagan train cycle-tune" in notes["cycle-add"][tune:first]
    assert "```\ndermagan train cycle\n```" in notes["cycle-add"][first:]
    (final,) = [r for r in SHIPPED["cpu"] if r.run == "cycle-final"]
    assert final.card_note and notes["cycle-add"].endswith(final.card_note)  # then what the recipe adds
    # only the listed runs are described, but their stages are found in the recipe they belong to
    assert "`cycle` (9000 steps)" in progress_notes([r for r in SHIPPED["cpu"] if r.run == "cycle-final"], tmp_path)["cycle-add"]
    assert "eczema-remove" not in notes  # no checkpoint yet: nothing to say
    (tmp_path / "remove" / "checkpoints").mkdir(parents=True)
    (tmp_path / "remove" / "checkpoints" / "last.pt").write_bytes(b"")
    (tmp_path / "remove" / "config.json").write_text(json.dumps({"steps": 3000}))
    notes = progress_notes(list(SHIPPED["cpu"]), tmp_path)
    assert "**not shipped**: pix2pix's U-Net as an inpainter" in notes["eczema-remove"]  # the recipe's card note


def test_cards_of_models_not_evaluated_this_time_stay(tmp_path):
    entries = []
    for name in ("eczema-add", "eczema-remove"):
        (tmp_path / f"{name}.onnx").write_bytes(name.encode())
        entries.append(ModelEntry(name=name, task=name.split("-")[1], version="1", file=f"{name}.onnx",
                                  sha256=sha256_file(tmp_path / f"{name}.onnx"), resolution=(128, 128),
                                  inputs={"image": IMG, "mask": MASK}, outputs={"image": IMG}))
    save_manifest(tmp_path, Manifest(models=entries))
    (tmp_path / "eczema-remove.md").write_text("an earlier, evaluated card")
    doc = {"models": {"eczema-add": {"targets": [], "metrics": {"outside.psnr": {"mean": 47.0, "std": 0.1}}}}}
    paths = write_cards(tmp_path, doc, "cpu", notes={"eczema-add": "Its run completed."})
    assert [p.name for p in paths] == ["eczema-add.md"]
    assert (tmp_path / "eczema-remove.md").read_text() == "an earlier, evaluated card"
    assert "Its run completed." in (tmp_path / "eczema-add.md").read_text()


def test_cards_read_the_manifest_as_it_is_now_and_skip_files_changed_since_evaluation(tmp_path):
    """An export into the folder between `evaluate` and the cards keeps its entry, and a model whose file
    was replaced since it was evaluated gets neither that evaluation's card nor its metrics."""
    def add(name: str, content: bytes) -> ModelEntry:
        (tmp_path / f"{name}.onnx").write_bytes(content)
        entry = ModelEntry(name=name, task=name.split("-")[1], version="1", file=f"{name}.onnx",
                           sha256=sha256_file(tmp_path / f"{name}.onnx"), resolution=(128, 128),
                           inputs={"image": IMG, "mask": MASK}, outputs={"image": IMG})
        manifest = load_manifest(tmp_path) if (tmp_path / "manifest.json").exists() else Manifest(models=[])
        manifest.upsert(entry)
        save_manifest(tmp_path, manifest)
        return entry

    evaluated = add("eczema-add", b"v1")
    result = {"sha256": evaluated.sha256, "targets": [], "metrics": {"outside.psnr": {"mean": 47.0, "std": 0.1}}}
    doc = {"models": {"eczema-add": result, "eczema-remove": {**result, "sha256": "0" * 64}}}
    add("eczema-remove", b"exported after the evaluation")  # its evaluation was of another file
    paths = write_cards(tmp_path, doc, "cpu")
    assert [p.name for p in paths] == ["eczema-add.md"]
    manifest = load_manifest(tmp_path, verify=True)
    assert [m.name for m in manifest.models] == ["eczema-add", "eczema-remove"]
    assert manifest.get("eczema-add").metrics == {"outside.psnr": 47.0} and manifest.get("eczema-remove").metrics == {}
    assert not (tmp_path / "eczema-remove.md").exists()
