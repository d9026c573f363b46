"""`dermagan evaluate` end to end on tiny hand-built ONNX models and the toy renderer: every task's
metrics come out, and they move the right way (identity remove vs a good one, noise generator...)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dermagan.manifest import Manifest, ModelEntry, TensorSpec, save_manifest, sha256_file
from dermagan.training import evaluate as ev
from dermagan.training.metrics import feature_training as ft
from dermagan.training.metrics import toy
from dermagan.training.metrics.features import save_extractor

SIZE, ZDIM = 32, 8
IMG = ["N", 3, "H", "W"]
# The toy renderer's eczema shift (toy.py: +15 R, -25 G, -20 B) in model units.
RED = np.array([15, -25, -20], np.float32) / 127.5


def _const(name: str, arr: np.ndarray):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(arr), name))


def _save(graph_nodes, inputs, outputs, path: Path, initializers=()) -> None:
    graph = helper.make_graph(graph_nodes, path.stem, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _image_in(name="image"):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, IMG)


def _mask_in():
    return helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1, "H", "W"])


def _image_out(name="image"):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, IMG)


def build_shift(path: Path, shift: np.ndarray, masked: bool) -> None:
    """clip(image + shift [3] (x mask)): add/remove/cycle stand-ins; shift 0 = identity. The output is
    "image_out" (ONNX is SSA: an output cannot reuse the input's name; see training/export.py)."""
    nodes = [_const("shift", shift.reshape(1, 3, 1, 1).astype(np.float32))]
    if masked:
        nodes += [helper.make_node("Mul", ["mask", "shift"], ["delta"]), helper.make_node("Add", ["image", "delta"], ["sum"])]
    else:
        nodes += [helper.make_node("Add", ["image", "shift"], ["sum"])]
    nodes += [_const("lo", np.float32(-1)), _const("hi", np.float32(1)), helper.make_node("Clip", ["sum", "lo", "hi"], ["image_out"])]
    ins = [_image_in()] + ([_mask_in()] if masked else [])
    _save(nodes, ins, [_image_out("image_out")], path)


def build_generator(path: Path) -> None:
    """z [N, ZDIM] + label -> tanh(z W + E[label]) reshaped to images: a noise generator."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (ZDIM, 3 * SIZE * SIZE)).astype(np.float32), "W")
    e = numpy_helper.from_array(rng.normal(0, 0.5, (3, 3 * SIZE * SIZE)).astype(np.float32), "E")
    nodes = [helper.make_node("MatMul", ["z", "W"], ["zw"]), helper.make_node("Gather", ["E", "label"], ["emb"], axis=0),
             helper.make_node("Add", ["zw", "emb"], ["pre"]), helper.make_node("Tanh", ["pre"], ["flat"]),
             _const("shape", np.array([-1, 3, SIZE, SIZE], np.int64)), helper.make_node("Reshape", ["flat", "shape"], ["image"])]
    ins = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", ZDIM]),
           helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])]
    _save(nodes, ins, [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])], path, [w, e])


def build_segmenter(path: Path) -> None:
    """logits = 20 (R - G - 0.45): red-shifted toy skin reads as eczema."""
    nodes = [_const("w", np.array([20, -20, 0], np.float32).reshape(1, 3, 1, 1)),
             helper.make_node("Mul", ["image", "w"], ["wx"]),
             helper.make_node("ReduceSum", ["wx", "axes"], ["s"], keepdims=1), _const("axes", np.array([1], np.int64)),
             _const("b", np.float32(-9.0)), helper.make_node("Add", ["s", "b"], ["mask_logits"])]
    nodes = [nodes[0], nodes[1], nodes[3], nodes[2], nodes[4], nodes[5]]
    _save(nodes, [_image_in()], [helper.make_tensor_value_info("mask_logits", TensorProto.FLOAT, ["N", 1, "H", "W"])], path)


def _entry(models: Path, name: str, task: str, file: str, **kw) -> ModelEntry:
    spec = {"image": TensorSpec(dtype="float32", shape=IMG), "mask": TensorSpec(dtype="float32", shape=["N", 1, "H", "W"]),
            "z": TensorSpec(dtype="float32", shape=["N", ZDIM]), "label": TensorSpec(dtype="int64", shape=["N"]),
            "mask_logits": TensorSpec(dtype="float32", shape=["N", 1, "H", "W"])}
    from dermagan.manifest import TASK_INPUTS, TASK_OUTPUTS

    ins = list(TASK_INPUTS[task]) + (["label"] if task == "generate" else [])
    return ModelEntry(name=name, task=task, version="0", file=file, sha256=sha256_file(models / file),
                      resolution=(SIZE, SIZE), inputs={k: spec[k] for k in ins},
                      outputs={k: spec[k] for k in TASK_OUTPUTS[task]}, **kw)


def build_models(d: Path) -> Path:
    """Seven tiny models, one or two per task, and their manifest in folder d."""
    d.mkdir(parents=True, exist_ok=True)
    zero = np.zeros(3, np.float32)
    build_shift(d / "add.onnx", RED, masked=True)
    build_shift(d / "remove-identity.onnx", zero, masked=True)
    build_shift(d / "remove-good.onnx", -RED, masked=True)
    build_shift(d / "cycle-add.onnx", RED, masked=False)
    build_shift(d / "cycle-remove.onnx", -RED, masked=False)
    build_generator(d / "generate.onnx")
    build_segmenter(d / "segment.onnx")
    dyn = {"dynamic_hw": True}
    entries = [_entry(d, "eczema-add", "add", "add.onnx", **dyn),
               _entry(d, "remove-identity", "remove", "remove-identity.onnx", **dyn),
               _entry(d, "remove-good", "remove", "remove-good.onnx", **dyn),
               _entry(d, "cycle-add", "cycle-add", "cycle-add.onnx", **dyn),
               _entry(d, "cycle-remove", "cycle-remove", "cycle-remove.onnx", **dyn),
               _entry(d, "generate", "generate", "generate.onnx", z_dim=ZDIM, labels=["eczema", "hand", "lesion"]),
               _entry(d, "segment", "segment", "segment.onnx", **dyn)]
    save_manifest(d, Manifest(models=entries))
    return d


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return build_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The CI box has 2 cores shared with other jobs: one thread is several times faster there."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def extractor_file(tmp_path_factory) -> Path:
    cfg = ft.tiny()
    data = ft.render_feature_data(cfg.per_kind, cfg.render_size, render=toy.render)
    net, classes, facts = ft.train_feature_net(cfg, data, log=None)
    return save_extractor(net, tmp_path_factory.mktemp("fx") / "fx.onnx", classes=classes, input_size=cfg.input_size, facts=facts)


def _args(models: Path, out: Path, extractor: Path, **kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    ev.add_arguments(p)
    size = kw.pop("size", SIZE)  # None: no --size (each model's own resolution)
    argv = ["--models", str(models), "--out", str(out), "--extractor", str(extractor), "--n", "24", "--seeds", "2",
            "--workers", "1"] + (["--size", str(size)] if size is not None else [])
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", *([str(x) for x in v] if isinstance(v, list) else [str(v)])]
    return p.parse_args(argv)


@pytest.fixture(scope="module")
def doc(models, extractor_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    ev.evaluate(_args(models, out, extractor_file), render=toy.render, log=lambda m: None)
    return json.loads((out / "metrics.json").read_text()), (out / "metrics.md").read_text()


def _mean(doc, model, key):
    return doc["models"][model]["metrics"][key]["mean"]


def test_every_model_is_evaluated_with_spread_over_seeds(doc):
    d, md = doc
    assert set(d["models"]) == {"eczema-add", "remove-identity", "remove-good", "cycle-add", "cycle-remove", "generate", "segment"}
    for m in d["models"].values():
        for v in m["metrics"].values():
            assert len(v["values"]) == 2
    assert "## generate (generate" in md and "| target |" in md
    assert "NaN" not in json.dumps(d)  # strict JSON: non-finite values are null


def test_noise_generator_misses_its_targets(doc):
    d, _ = doc
    for kind in ("eczema", "hand", "lesion"):
        assert _mean(d, "generate", f"{kind}.kid.inproj") > 10 * abs(_mean(d, "generate", f"{kind}.kid_floor.inproj"))
        assert _mean(d, "generate", f"{kind}.c2st.random") > 0.9
        assert _mean(d, "generate", f"{kind}.copy_rate.random") < 0.05
    results = {t["metric"]: t["result"] for t in d["models"]["generate"]["targets"]}
    assert results["eczema.kid.inproj"] == "miss" and results["eczema.c2st.inproj"] == "miss"


def test_add_keeps_outside_and_is_segmented(doc):
    d, _ = doc
    assert _mean(d, "eczema-add", "outside.psnr") == 100.0  # the shift is masked: outside untouched
    assert _mean(d, "eczema-add", "segment.iou_real") > 0.5
    assert _mean(d, "eczema-add", "segment.iou_relative") > 0.7
    # the flat-tint baseline beside it (no model): its numbers are measured on the same images and masks
    for key in ("inside_vs_truth.psnr.tint", "inside_vs_truth.ssim.tint", "segment.iou_relative.tint"):
        assert np.isfinite(_mean(d, "eczema-add", key)), key


def test_the_tint_baseline_lays_eczemas_mean_colour_over_the_mask_only():
    healthy = np.full((2, 4, 4, 3), 200, np.uint8)
    masks = np.zeros((2, 4, 4), bool)
    masks[:, 1:3, 1:3] = True
    eczema = np.zeros((1, 4, 4, 3), np.uint8)
    eczema[0, :2] = (100, 0, 0)  # the mask covers these rows: their colour is the mean
    tinted = ev.tint_baseline(healthy, masks, eczema, np.arange(16).reshape(1, 4, 4) < 8)
    assert (tinted[~masks] == 200).all()
    expected = np.rint(np.array([200, 200, 200]) * (1 - ev.TINT_ALPHA) + np.array([100, 0, 0]) * ev.TINT_ALPHA)
    assert (tinted[masks] == expected).all()


def test_remove_good_beats_identity_and_reduces_area(doc):
    d, _ = doc
    good, ident = "remove-good", "remove-identity"
    assert _mean(d, good, "inside.psnr") > _mean(d, ident, "inside.psnr") + 5
    assert _mean(d, ident, "inside.psnr") == pytest.approx(_mean(d, ident, "inside.psnr.unchanged"))
    assert _mean(d, good, "segment.area_reduction") > 0.8 > _mean(d, ident, "segment.area_reduction")
    assert np.isfinite(_mean(d, ident, "inside.psnr.biharmonic"))
    results = {t["metric"]: t["result"] for t in d["models"][ident]["targets"]}
    assert results["segment.area_reduction"] == "miss"


def test_cycle_scores_and_reconstructs(doc):
    d, _ = doc
    for name in ("cycle-add", "cycle-remove"):
        # The classifier tells held-out eczema from healthy (the floor: the true target images) ...
        assert _mean(d, name, "direction.target_share_floor") > 0.8
        assert 0 <= _mean(d, name, "direction.moved_share") <= 1
        # ... and the two shifts undo each other (up to clipping at the ends of [-1, 1]).
        assert _mean(d, name, "cycle.psnr") > 28
    assert {t["metric"] for t in d["models"]["cycle-add"]["targets"]} == {"cycle.psnr", "direction.target_share"}


def test_segment_scores(doc):
    d, _ = doc
    assert 0.5 < _mean(d, "segment", "eczema.iou") <= 1.0


def test_subset_of_tasks_and_unknown_names(models, extractor_file, tmp_path):
    d = ev.evaluate(_args(models, tmp_path, extractor_file, only=["remove-identity"], seeds=1, baseline_n=8),
                    render=toy.render, log=lambda m: None)
    assert list(d["models"]) == ["remove-identity"]
    assert "inside.psnr.model_on_baseline_subset" in d["models"]["remove-identity"]["metrics"]
    with pytest.raises(ValueError, match="unknown models"):
        ev.evaluate(_args(models, tmp_path, extractor_file, only=["nope"]), render=toy.render, log=lambda m: None)


def test_without_size_each_model_is_evaluated_at_its_own_resolution(models, extractor_file, tmp_path):
    """--size defaulted to 128 whatever the models were trained at: a 32 px model was fed 128 px images (and a
    folder's photographs squashed to 128 for it). Without --size, each model's resolution (here 32)."""
    kw = dict(only=["remove-identity"], seeds=1, baseline_n=8)
    own = ev.evaluate(_args(models, tmp_path / "own", extractor_file, size=None, **kw), render=toy.render,
                      log=lambda m: None)
    given = ev.evaluate(_args(models, tmp_path / "given", extractor_file, **kw), render=toy.render, log=lambda m: None)
    assert own["settings"]["size"] is None and given["settings"]["size"] == SIZE
    assert own["models"] == given["models"]
    assert "each model at its own resolution; inpainting" in (tmp_path / "own" / "metrics.md").read_text()


def test_a_generator_of_ones_own_classes_is_evaluated_on_the_kinds_the_renderer_draws(models, extractor_file, tmp_path):
    """A generator trained on one's own class folders draws their names (MEL, NV), which the renderer does not:
    those labels are skipped, said in the log and in metrics.md, and get no targets (evaluate once failed on
    them: "unknown kind 'MEL'"); a renderer kind of the same model is evaluated as before."""
    sub = tmp_path / "models"
    sub.mkdir()
    (sub / "generate.onnx").write_bytes((models / "generate.onnx").read_bytes())  # three labels
    save_manifest(sub, Manifest(models=[_entry(sub, "own-generate", "generate", "generate.onnx", z_dim=ZDIM,
                                               labels=["MEL", "lesion", "NV"])]))
    said: list[str] = []
    d = ev.evaluate(_args(sub, tmp_path / "out", extractor_file, seeds=1), render=toy.render, log=said.append)
    m = d["models"]["own-generate"]
    assert m["skipped_labels"] == ["MEL", "NV"]
    assert {k.split(".")[0] for k in m["metrics"]} == {"lesion"} and "lesion.kid.inproj" in m["metrics"]
    assert {t["metric"].split(".")[0] for t in m["targets"]} == {"lesion"}
    assert any("own-generate: MEL, NV are not kinds of the procedural renderer" in x and "--data DIR" in x for x in said)
    assert "Not evaluated: `MEL`, `NV` (not a kind of the procedural renderer" in (tmp_path / "out" / "metrics.md").read_text()


def test_cli_with_the_real_renderer(models, extractor_file, tmp_path):
    """`dermagan evaluate` through the console-script dispatcher, on the procedural renderer."""
    pytest.importorskip("dermagan.training.synth")
    from dermagan.cli import main

    out = tmp_path / "eval"
    rc = main(["evaluate", "--models", str(models), "--out", str(out), "--extractor", str(extractor_file),
               "--n", "10", "--seeds", "1", "--size", str(SIZE), "--workers", "2", "--only", "remove-good", "segment"])
    assert rc == 0
    d = json.loads((out / "metrics.json").read_text())
    assert set(d["models"]) == {"remove-good", "segment"}
    assert np.isfinite(d["models"]["remove-good"]["metrics"]["inside.psnr.biharmonic"]["mean"])
    assert "| target |" in (out / "metrics.md").read_text()


def test_the_models_folder_defaults_to_the_shipped_one_as_the_gallery_and_the_release_do():
    import argparse

    from dermagan.training import gallery, release

    parsed = []
    for module in (ev, gallery, release):
        p = argparse.ArgumentParser()
        module.add_arguments(p)
        parsed.append(p.parse_args(["--out", "x"] if module is ev else []).models)
    assert parsed[0] == parsed[1] == parsed[2] == ev.SHIPPED_EXTRACTOR.parent
    assert (parsed[0] / "manifest.json").is_file()


def test_manifest_without_segmenter_or_cycle_partner(models, extractor_file, tmp_path):
    """Metrics that need another model (segmenter, opposite cycle) are left out, their targets n/a."""
    full = json.loads((models / "manifest.json").read_text())
    sub = tmp_path / "models"
    sub.mkdir()
    keep = [m for m in full["models"] if m["name"] in ("remove-good", "cycle-add")]
    for m in keep:
        (sub / m["file"]).write_bytes((models / m["file"]).read_bytes())
    (sub / "manifest.json").write_text(json.dumps({**full, "models": keep}))
    said: list[str] = []
    d = ev.evaluate(_args(sub, tmp_path / "out", extractor_file, seeds=1), render=toy.render, log=said.append)
    assert any(m.startswith("no segmenter in") and "--segmenter DIR" in m for m in said), said
    remove, cycle = d["models"]["remove-good"], d["models"]["cycle-add"]
    assert not any(k.startswith("segment.") for k in remove["metrics"])
    assert {t["metric"]: t["result"] for t in remove["targets"]}["segment.area_reduction"] == "n/a"
    assert "cycle.psnr" not in cycle["metrics"] and "direction.target_share" in cycle["metrics"]
    assert d["settings"]["segmenter"] is None and "No segmenter" in (tmp_path / "out" / "metrics.md").read_text()

    # --segmenter: another folder's segmenter measures them (here the full folder's)
    logged: list[str] = []
    d = ev.evaluate(_args(sub, tmp_path / "with", extractor_file, seeds=1, only=["remove-good"], segmenter=models),
                    render=toy.render, log=logged.append)
    good = d["models"]["remove-good"]
    assert good["metrics"]["segment.area_reduction"]["mean"] > 0.8
    assert {t["metric"]: t["result"] for t in good["targets"]}["segment.area_reduction"] == "pass"
    assert d["settings"]["segmenter"]["name"] == "segment" and d["settings"]["segmenter"]["folder"] == str(models)
    assert "Segmenter of the `segment.*` metrics: `segment`" in (tmp_path / "with" / "metrics.md").read_text()
    assert not any("no segmenter" in m for m in logged)
    with pytest.raises(ValueError, match="its manifest has no segment model"):
        ev.evaluate(_args(sub, tmp_path / "x", extractor_file, seeds=1, segmenter=sub), render=toy.render, log=print)
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        ev.evaluate(_args(sub, tmp_path / "x", extractor_file, seeds=1, segmenter=tmp_path), render=toy.render, log=print)


def test_validation_split_draws_other_images_and_bad_seed_counts_fail_early(models, extractor_file, tmp_path):
    kw = dict(only=["remove-good"], seeds=1, baseline_n=4)
    test = ev.evaluate(_args(models, tmp_path / "t", extractor_file, **kw), render=toy.render, log=lambda m: None)
    val = ev.evaluate(_args(models, tmp_path / "v", extractor_file, split="validation", **kw), render=toy.render,
                      log=lambda m: None)
    assert (test["settings"]["split"], val["settings"]["split"]) == ("test", "validation")
    assert "s = 100..100 (validation split)" in val["split"]["eval_seeds"]
    key = "inside.psnr"
    assert test["models"]["remove-good"]["metrics"][key]["values"] != val["models"]["remove-good"]["metrics"][key]["values"]
    assert ev.split_seeds("validation", 2) == [100, 101] and ev.split_seeds("test", 2) == [0, 1]
    with pytest.raises(ValueError, match=r"--seeds must be within 1..100, got 101"):
        ev.evaluate(_args(models, tmp_path / "x", extractor_file, seeds=101), render=toy.render, log=lambda m: None)
    with pytest.raises(ValueError, match=r"--n must be at least 6 \(density and coverage .*\), got 5"):
        ev.evaluate(_args(models, tmp_path / "x", extractor_file, n=5), render=toy.render, log=lambda m: None)
    with pytest.raises(FileNotFoundError, match=r"no such folder \(--data\)"):
        ev.evaluate(_args(models, tmp_path / "x", extractor_file, data=tmp_path / "nope"), render=toy.render,
                    log=lambda m: None)
    # before: --size 0 evaluated at the model's size multiple, --baseline-n -3 failed in np.stack, --random-seed -1
    # in numpy's seeding, --workers 0 ran in-process as 1 does
    for kw, words in ((dict(size=0), r"--size must be at least 16, got 0"),
                      (dict(workers=0), r"--workers and --batch must be at least 1, got 0 and 16"),
                      (dict(batch=0), r"--workers and --batch must be at least 1, got 1 and 0"),
                      (dict(baseline_n=-3), r"--baseline-n must be at least 1 \(leave it out for all --n\), got -3"),
                      (dict(random_seed=-1), r"--random-seed must be >= 0, got -1")):
        with pytest.raises(ValueError, match=words):
            ev.evaluate(_args(models, tmp_path / "x", extractor_file, **kw), render=toy.render, log=lambda m: None)
    assert not (tmp_path / "x").exists()  # refused before anything was written


def _photo_folders(root: Path) -> tuple[Path, Path]:
    """Toy renders written as a user's held-out photographs: the paper layout (eczema images with their masks,
    healthy skin with empty masks, no exact pairs) and class folders (eczema/, hand/, lesion/)."""
    from PIL import Image

    paper, classes = root / "paper", root / "classes"
    for sub in ("image", "patho"):
        (paper / sub).mkdir(parents=True)
    for i in range(12):
        s = toy.render("eczema", 7_000 + i, size=SIZE)
        if i % 2:  # an eczema photograph ...
            Image.fromarray(s.image).save(paper / "image" / f"e{i}_image.png")
            Image.fromarray((s.mask > 0).astype(np.uint8) * 255).save(paper / "patho" / f"e{i}_patho.png")
        else:  # ... or someone else's healthy skin
            Image.fromarray(s.healthy).save(paper / "image" / f"h{i}_image.jpg", quality=95)
            Image.fromarray(np.zeros(s.image.shape[:2], np.uint8)).save(paper / "patho" / f"h{i}_patho.png")
    for kind in ("eczema", "hand", "lesion"):
        (classes / kind).mkdir(parents=True)
        for i in range(14):
            Image.fromarray(toy.render(kind, 8_000 + i, size=SIZE).image).save(classes / kind / f"{i}.png")
    return paper, classes


def test_your_own_photographs_without_exact_counterparts(models, extractor_file, tmp_path):
    """--data: the metrics that need no exact counterpart, from files as `dermagan train --data` reads them;
    the good remover still beats the identity, the segmenter and the masked add still score."""
    paper, classes = _photo_folders(tmp_path)
    edits = ev.evaluate(_args(models, tmp_path / "p", extractor_file, data=paper, seeds=2,
                              only=["remove-good", "remove-identity", "eczema-add", "segment", "cycle-add"]),
                        render=toy.render, log=lambda m: None)
    assert "your photographs in" in edits["split"]["eval_seeds"] and edits["settings"]["data"] == str(paper)
    good, ident = edits["models"]["remove-good"], edits["models"]["remove-identity"]
    assert "inside.psnr" not in good["metrics"]  # needs the exact healthy skin
    assert {t["metric"]: t["result"] for t in good["targets"]}["inside.psnr"] == "n/a"
    assert good["metrics"]["segment.area_reduction"]["mean"] > 0.8 > ident["metrics"]["segment.area_reduction"]["mean"]
    assert edits["models"]["segment"]["metrics"]["eczema.iou"]["mean"] > 0.5
    add = edits["models"]["eczema-add"]["metrics"]
    assert add["outside.psnr"]["mean"] == 100.0 and add["segment.iou_relative"]["mean"] > 0.7
    assert edits["models"]["cycle-add"]["metrics"]["direction.moved_share"]["mean"] > 0.9
    gen = ev.evaluate(_args(models, tmp_path / "g", extractor_file, data=classes, seeds=1, only=["generate"]),
                      render=toy.render, log=lambda m: None)["models"]["generate"]["metrics"]
    for kind in ("eczema", "hand", "lesion"):  # the noise generator is far from each class's photographs
        assert gen[f"{kind}.kid.inproj"]["mean"] > 5 * abs(gen[f"{kind}.kid_floor.inproj"]["mean"])
    assert not any(k.startswith(("eczema.copy_rate", "hand.copy_rate")) for k in gen)
    patches = ev.evaluate(_args(models, tmp_path / "pp", extractor_file, data=paper, seeds=1, patches=48,
                                only=["remove-good"]), render=toy.render, log=lambda m: None)
    assert patches["settings"]["patches"] == 48  # 32 px patches of the photographs shown at 48 px: 3 x 3 each
    assert patches["models"]["remove-good"]["metrics"]["segment.area_reduction"]["mean"] > 0.8
    with pytest.raises(ValueError, match=r"paper's layout \(image/, patho/\)"):
        ev.evaluate(_args(models, tmp_path / "x", extractor_file, data=classes, seeds=1, only=["segment"]),
                    render=toy.render, log=lambda m: None)


def test_without_an_extractor_in_models_or_out_the_shipped_one_is_used(extractor_file, tmp_path, monkeypatch):
    """A folder of the user's own models has no feature-extractor.onnx: the shipped models' feature space
    (that of their cards) is used and named, rather than a new one trained for minutes."""
    monkeypatch.setattr(ev, "SHIPPED_EXTRACTOR", extractor_file)
    args = _args(tmp_path / "mine", tmp_path / "out", extractor_file)
    args.extractor = None
    said = []
    extractor = ev.resolve_extractor(args, said.append)
    assert said == [f"feature extractor: the shipped models' ({extractor_file}), the feature space of their cards"]
    assert extractor is not None


def test_a_model_of_which_nothing_was_measured_fails_the_run(tmp_path, monkeypatch, capsys):
    """`evaluate --data` with too few images of a generator's class skipped it: a report of no numbers, exit 0."""
    import argparse

    doc = {"models": {"own-generate": {"metrics": {}, "targets": []},
                      "segment": {"metrics": {"eczema.iou": {"mean": 0.8, "std": 0.0}}, "targets": []}}}
    monkeypatch.setattr(ev, "evaluate", lambda args, log: doc)
    args = argparse.Namespace(out=tmp_path)
    assert ev.run(args) == 1
    assert "nothing measured for own-generate: no held-out data for it" in capsys.readouterr().err
    del doc["models"]["own-generate"]
    assert ev.run(args) == 0
