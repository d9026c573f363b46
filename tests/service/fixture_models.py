"""Small but real ONNX models of every task, plus a manifest.json, for the service's tests and bench.

Built with the `onnx` helper API (no torch): fixed random weights, dynamic batch axis (and H/W for
the convolutional ones), metadata_props as `dermagan export` writes them. Usage:

    entries = build_models(tmp_path)            # writes *.onnx + manifest.json, returns the entries
    python tests/service/fixture_models.py DIR  # the same from a shell (the benchmark uses it)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dermagan.manifest import Manifest, ModelEntry, TensorSpec, graph_output_names, metadata_props, save_manifest, sha256_file

EDIT_RES = 64  # add / remove / cycle / segment resolution (dynamic H, W; multiples of 4)
GEN_RES = 32  # generate output resolution
Z_DIM = 16
OPSET = 17
IR_VERSION = 10  # what `dermagan export` writes; onnxruntime-gpu 1.31 reads at most IR 13

IMAGE = TensorSpec(dtype="float32", shape=["N", 3, "H", "W"], range="[-1, 1]")
MASK = TensorSpec(dtype="float32", shape=["N", 1, "H", "W"], range="{0, 1}")
LOGITS = TensorSpec(dtype="float32", shape=["N", 1, "H", "W"], range="logits")


def _conv(name: str, rng: np.random.Generator, c_in: int, c_out: int, scale: float) -> list[onnx.TensorProto]:
    w = (rng.standard_normal((c_out, c_in, 3, 3)) * scale / np.sqrt(c_in * 9)).astype(np.float32)
    b = (rng.standard_normal(c_out) * 0.05).astype(np.float32)
    return [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")]


def _conv_net(task: str, c_in: int, c_out: int, out_name: str, *, seed: int, head: str) -> onnx.ModelProto:
    """[concat(inputs)] -> conv 3x3 (8) -> relu -> conv 3x3 (c_out) -> head (Tanh or nothing)."""
    rng = np.random.default_rng(seed)
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])]
    nodes = []
    x = "image"
    if c_in == 4:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1, "H", "W"]))
        nodes.append(helper.make_node("Concat", ["image", "mask"], ["x"], axis=1))
        x = "x"
    graph_out = graph_output_names(task)[0]  # "image_out" for image->image models (ONNX is SSA)
    init = _conv("c1", rng, c_in, 8, 2.0) + _conv("c2", rng, 8, c_out, 2.0)
    nodes += [
        helper.make_node("Conv", [x, "c1_w", "c1_b"], ["h1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("Conv", ["h2", "c2_w", "c2_b"], ["h3" if head else graph_out], pads=[1, 1, 1, 1]),
    ]
    if head:
        nodes.append(helper.make_node(head, ["h3"], [graph_out]))
    output = helper.make_tensor_value_info(graph_out, TensorProto.FLOAT, ["N", c_out, "H", "W"])
    graph = helper.make_graph(nodes, f"fixture-{task}", inputs, [output], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def _generator(labels: int, *, seed: int) -> onnx.ModelProto:
    """z [N, Z] (+ label [N]) -> (z + embed[label]) @ W -> [N, 3, 32, 32] -> conv 3x3 -> tanh."""
    rng = np.random.default_rng(seed)
    inputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", Z_DIM])]
    init = [numpy_helper.from_array((rng.standard_normal((Z_DIM, 3 * GEN_RES * GEN_RES)) / np.sqrt(Z_DIM)).astype(np.float32), "fc_w"),
            numpy_helper.from_array(np.array([-1, 3, GEN_RES, GEN_RES], np.int64), "shape")]
    init += _conv("c1", rng, 3, 3, 1.5)
    nodes = []
    z = "z"
    if labels > 1:
        inputs.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]))
        init.append(numpy_helper.from_array(rng.standard_normal((labels, Z_DIM)).astype(np.float32), "embed"))
        nodes += [helper.make_node("Gather", ["embed", "label"], ["e"], axis=0),
                  helper.make_node("Add", ["z", "e"], ["ze"])]
        z = "ze"
    nodes += [
        helper.make_node("MatMul", [z, "fc_w"], ["h"]),
        helper.make_node("Reshape", ["h", "shape"], ["h2"]),
        helper.make_node("Conv", ["h2", "c1_w", "c1_b"], ["h3"], pads=[1, 1, 1, 1]),
        helper.make_node("Tanh", ["h3"], ["image"]),
    ]
    output = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, GEN_RES, GEN_RES])
    graph = helper.make_graph(nodes, "fixture-generate", inputs, [output], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def _entry(name: str, task: str, model: onnx.ModelProto, **extra: object) -> ModelEntry:
    res = GEN_RES if task == "generate" else EDIT_RES
    if task == "generate":
        ins = {"z": TensorSpec(dtype="float32", shape=["N", Z_DIM])}
        if "label" in {i.name for i in model.graph.input}:
            ins["label"] = TensorSpec(dtype="int64", shape=["N"])
        outs = {"image": TensorSpec(dtype="float32", shape=["N", 3, GEN_RES, GEN_RES], range="[-1, 1]")}
        extra = {"z_dim": Z_DIM, **extra}
    else:
        ins = {"image": IMAGE, **({"mask": MASK} if task in ("add", "remove") else {})}
        outs = {"mask_logits": LOGITS} if task == "segment" else {"image": IMAGE}
        extra = {"dynamic_hw": True, "size_multiple": 4, **extra}
    return ModelEntry(name=name, task=task, version="0-fixture", file=f"{name}.onnx", sha256="0" * 64,  # type: ignore[arg-type]
                      resolution=(res, res), inputs=ins, outputs=outs, opset=OPSET,
                      trained_on="nothing: fixed random weights (test fixture)", **extra)  # type: ignore[arg-type]


def fixture_graphs() -> list[tuple[str, str, onnx.ModelProto, dict[str, object]]]:
    return [
        ("fixture-generate", "generate", _generator(3, seed=1), {"labels": ["eczema", "hand", "lesion"]}),
        ("fixture-add", "add", _conv_net("add", 4, 3, "image", seed=2, head="Tanh"), {}),
        ("fixture-remove", "remove", _conv_net("remove", 4, 3, "image", seed=3, head="Tanh"), {}),
        ("fixture-cycle-add", "cycle-add", _conv_net("cycle-add", 3, 3, "image", seed=4, head="Tanh"), {}),
        ("fixture-cycle-remove", "cycle-remove", _conv_net("cycle-remove", 3, 3, "image", seed=5, head="Tanh"), {}),
        ("fixture-segment", "segment", _conv_net("segment", 3, 1, "mask_logits", seed=6, head=""), {}),
    ]


def build_models(folder: Path, *, only: tuple[str, ...] | None = None, hand_generator: bool = False,
                 copies: dict[str, str] | None = None, own_classes: tuple[str, ...] = ()) -> list[ModelEntry]:
    """Write the fixture models (all tasks, or those named in `only`) and their manifest.json;
    `hand_generator` adds a one-kind generator (labels ["hand"]) after the shared one; `copies` (new name
    -> fixture name) adds a second model of that fixture's task, the same graph under the new name, last;
    `own_classes` adds "fixture-own-generate", a generator of those class names (as `dermagan train generate
    --data` trains on one's own class folders), last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    graphs = fixture_graphs()
    if hand_generator:
        graphs.insert(1, ("fixture-hand-generate", "generate", _generator(1, seed=7), {"labels": ["hand"]}))
    if own_classes:
        graphs.append(("fixture-own-generate", "generate", _generator(len(own_classes), seed=8),
                       {"labels": list(own_classes)}))
    by_name = {g[0]: g for g in graphs}
    for new, old in (copies or {}).items():
        _, task, model, extra = by_name[old]
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        graphs.append((new, task, copy, extra))
    for name, task, model, extra in graphs:
        if only is not None and name not in only and task not in only:
            continue
        entry = _entry(name, task, model, **extra)
        helper.set_model_props(model, metadata_props(entry))
        onnx.checker.check_model(model, full_check=True)
        path = folder / entry.file
        onnx.save(model, path)
        entries.append(entry.model_copy(update={"sha256": sha256_file(path)}))
    save_manifest(folder, Manifest(models=entries))
    return entries


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "fixture-models")
    for e in build_models(out):
        print(f"{out / e.file}  {e.task}")
