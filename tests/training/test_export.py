"""`dermagan export`: one checked ONNX file + manifest entry per model, refusals write nothing.

The happy path exports real tiny training runs of every family through the CLI (and so through
`load_exportables`); the refusal paths use small modules of their own that follow the Exportable
contract and break it on purpose.
"""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from dermagan import cli
from dermagan.manifest import TASK_INPUTS, load_manifest, metadata_props
from dermagan.training import export as ex

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "contract"))
from tiny_runs import exported_once  # noqa: E402

torch.manual_seed(0)
RES = 16  # the toys: tiny, the checks and not the networks are under test
TRAINED = 32  # the tiny preset's resolution


@dataclass
class Toy:
    """A stand-in that follows the Exportable contract of docs/INTERFACES.md."""

    task: str
    name: str
    module: nn.Module
    example_inputs: dict
    facts: dict = field(default_factory=dict)


def _facts(**kw):
    base = dict(resolution=(RES, RES), size_multiple=4, dynamic_hw=True, version="1",
                trained_on="toy", recipe="pytest")
    return {**base, **kw}


class Translator(nn.Module):
    """image (+ mask) -> image: conv / stride-2 down / up, InstanceNorm + eval BatchNorm, residual tanh."""

    def __init__(self, in_ch: int, out_ch: int = 3, c: int = 8, residual: bool = True):
        super().__init__()
        self.residual = residual
        self.net = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(in_ch, c, 3), nn.InstanceNorm2d(c, affine=True), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.BatchNorm2d(2 * c), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 2 * c, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(c, out_ch, 4, 2, 1))
        for m in self.modules():  # non-trivial running stats, so eval BN is not the identity
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)

    def forward(self, image, mask=None):
        x = image if mask is None else torch.cat([image, mask], 1)  # (B, 3|4, H, W)
        y = self.net(x)
        return (image + torch.tanh(y)).clamp(-1, 1) if self.residual else y


def _img(n=1):
    return torch.rand(n, 3, RES, RES) * 2 - 1


def _mask(n=1):
    return (torch.rand(n, 1, RES, RES) > 0.5).float()


def toy(task: str, name: str | None = None) -> Toy:
    if task in ("add", "remove"):
        return Toy(task, name or f"eczema-{task}", Translator(4).eval(), {"image": _img(), "mask": _mask()}, _facts())
    if task == "segment":
        return Toy(task, name or "segment", Translator(3, 1, residual=False).eval(), {"image": _img()}, _facts())
    return Toy(task, name or task, Translator(3).eval(), {"image": _img()}, _facts())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Tiny runs of every family, each exported with `dermagan export RUN --out models` (once a session)."""
    out, modules = exported_once(tmp_path_factory)
    return out, modules, load_manifest(out).models


def _feed(t: Toy, n: int, hw=None):
    g = torch.Generator().manual_seed(n)
    return ex._sample_inputs(t, n, g, hw=hw)


def _ort(path, feed):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {k: v.numpy() for k, v in feed.items()})[0]


def test_every_task_is_written_and_loads_through_the_manifest(exported):
    out, toys, entries = exported
    manifest = load_manifest(out, verify=True)
    assert sorted(m.name for m in manifest.models) == sorted(toys) == sorted(
        ["generate", "lesion-generate", "eczema-add", "eczema-remove", "cycle-add", "cycle-remove", "eczema-segment"])
    assert {m.task for m in manifest.models} == set(TASK_INPUTS)
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    for e in entries:
        assert (out / e.file).stat().st_size > 1000
        assert not list(out.glob(f"{e.file}.data")), "weights must live inside the one file"


def test_graph_names_metadata_and_opset(exported):
    out, toys, entries = exported
    for e in entries:
        model = onnx.load(str(out / e.file))
        onnx.checker.check_model(model, full_check=True)
        assert [i.name for i in model.graph.input] == list(ex.graph_input_names(e.task, toys[e.name].facts))
        assert [o.name for o in model.graph.output] == list(ex.graph_output_names(e.task))
        assert list(e.inputs) == [i.name for i in model.graph.input]
        props = {p.key: p.value for p in model.metadata_props}
        assert props == metadata_props(e)
        facts = json.loads(props["dermagan.manifest"])
        assert facts["task"] == e.task and facts["resolution"] == [TRAINED, TRAINED]
        assert facts["trained_on"] == toys[e.name].facts["trained_on"] != ""
        assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {18}
        batch_axes = [i.type.tensor_type.shape.dim[0].dim_param for i in (*model.graph.input, *model.graph.output)]
        assert set(batch_axes) == {"N"}
        # nothing of where it was exported: no stack traces with this checkout's or the venv's paths, no source
        # lines (an edit that moved a line changed the bytes and sha256 of models whose weights had not changed)
        data = (out / e.file).read_bytes()
        assert b"site-packages" not in data and str(Path(ex.__file__).resolve().parent).encode() not in data
        assert b"pkg.torch" not in data and b"stack_trace" not in data
        g = model.graph
        assert not [x.metadata_props for x in (*g.node, *g.value_info, *g.input, *g.output) if x.metadata_props]
    generate = next(e for e in entries if e.name == "generate")
    assert generate.labels == ["eczema", "hand"] and "label" in generate.inputs and generate.z_dim == 16
    assert generate.inputs["label"].dtype == "int64"
    assert "label" not in next(e for e in entries if e.name == "lesion-generate").inputs


@pytest.mark.parametrize("n", [1, 2, 5])
def test_dynamic_batch_matches_pytorch(exported, n):
    out, toys, entries = exported
    for e in entries:
        t = toys[e.name]
        feed = _feed(t, n)
        got = _ort(out / e.file, feed)
        with torch.no_grad():
            want = t.module(*feed.values()).numpy()
        assert got.shape[0] == n
        assert np.abs(got - want).max() <= ex.PARITY_ATOL, e.name


def test_dynamic_height_and_width(exported):
    out, toys, entries = exported
    for e in entries:
        t = toys[e.name]
        if not e.dynamic_hw:
            assert e.task == "generate" and e.outputs["image"].shape[2:] == [TRAINED, TRAINED]
            continue
        model = onnx.load(str(out / e.file))
        dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
        assert dims == ["N", "", "H", "W"]
        feed = _feed(t, 2, hw=(48, 64))
        got = _ort(out / e.file, feed)
        with torch.no_grad():
            want = t.module(*feed.values()).numpy()
        assert got.shape[2:] == (48, 64) and np.abs(got - want).max() <= ex.PARITY_ATOL, e.name


def test_reexport_replaces_the_entry(tmp_path):
    # opset 17 (the fast TorchScript exporter): the write path, not the exporter, is under test here
    first = ex.export_model(toy("cycle-add"), tmp_path, opset=17)
    ex.export_model(toy("segment"), tmp_path, name="seg-v2", opset=17)
    second = ex.export_model(toy("cycle-add"), tmp_path, opset=17, replace=True)  # new random weights, same name
    manifest = load_manifest(tmp_path, verify=True)
    assert [m.name for m in manifest.models] == ["cycle-add", "seg-v2"]  # in its place: the order picks who serves
    assert manifest.get("cycle-add").sha256 == second.sha256 != first.sha256


def test_opset_17_uses_the_torchscript_exporter_and_passes_the_same_checks(tmp_path):
    e = ex.export_model(toy("add"), tmp_path, opset=17)
    model = onnx.load(str(tmp_path / e.file))
    assert e.opset == 17 and {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {17}
    assert [i.name for i in model.graph.input] == ["image", "mask"]
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim] == ["N", "", "H", "W"]
    load_manifest(tmp_path, verify=True)


# ----------------------------------------------------------------------------- refusals


class BatchStatsTranslator(Translator):
    """BatchNorm without running stats normalises with the batch's statistics even in eval mode."""

    def __init__(self):
        super().__init__(3)
        self.net[5] = nn.BatchNorm2d(16, track_running_stats=False)


class ExportsDifferently(Translator):
    """Its exported graph computes something else than its eager forward (a wrong custom op, in effect)."""

    def forward(self, image, mask=None):
        y = super().forward(image)
        if torch.compiler.is_exporting() or torch.jit.is_tracing():
            return y * 0.99
        return y


def _assert_nothing_written(out: Path, before: dict[str, bytes]):
    now = {p.name: p.read_bytes() for p in out.iterdir()} if out.exists() else {}
    assert now == before


# The TorchScript exporter (opset 17) cannot export such a BatchNorm at all: refused either way.
@pytest.mark.parametrize("opset, why", [(18, "depends on the other images in its batch"),
                                        (17, "exporter failed: .*batch_size and channel_size")])
def test_batch_dependent_model_is_refused(tmp_path, opset, why):
    bad = Toy("cycle-add", "cycle-add", BatchStatsTranslator().eval(), {"image": _img()}, _facts())
    with pytest.raises(ex.ExportError, match=why):
        ex.export_model(bad, tmp_path / "models", opset=opset)
    assert not (tmp_path / "models").exists()


def test_model_whose_onnx_differs_is_refused_and_nothing_of_the_run_is_written(tmp_path):
    ex.export_model(toy("segment"), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    bad = Toy("cycle-remove", "cycle-remove", ExportsDifferently(3).eval(), {"image": _img()}, _facts())
    with pytest.raises(ex.ExportError, match=r"differs from PyTorch by .* at batch 1; the limit is 0.0001"):
        ex.export_models([toy("cycle-add"), bad], tmp_path, opset=17)  # the good one is not written either
    _assert_nothing_written(tmp_path, before)


def test_facts_that_overstate_dynamic_sizes_are_refused(tmp_path):
    liar = toy("cycle-add")
    liar.facts["size_multiple"] = 2  # the toy needs multiples of 4
    with pytest.raises(ex.ExportError, match="at batch 2 at 18x20"):
        ex.export_model(liar, tmp_path, opset=17)
    assert list(tmp_path.iterdir()) == []


def test_bad_names_and_opsets_are_refused(tmp_path):
    with pytest.raises(ex.ExportError, match=r"model name 'Not A Name': a name is lower-case letters, digits"):
        ex.export_model(toy("segment"), tmp_path, name="Not A Name")
    with pytest.raises(ex.ExportError, match="opset 16 is not supported"):
        ex.export_model(toy("segment"), tmp_path, opset=16)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(ex.ExportError, match="existing manifest"):
        ex.export_model(toy("segment"), tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"manifest.json"}


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    """A run folder whose load_exportables gives two toys (stands in for a real checkpoint loader)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    runs = {run: [toy("cycle-add"), toy("cycle-remove")]}
    fake = types.ModuleType("dermagan.training.checkpoint")
    fake.load_exportables = lambda run_dir, weights="ema", step=None, best=False: (runs[Path(run_dir), step] if step
                                                                                 else runs[Path(run_dir)])
    monkeypatch.setitem(sys.modules, "dermagan.training.checkpoint", fake)
    return run, runs


def test_cli_exports_every_model_of_a_run(fake_run, tmp_path, capsys):
    run, _ = fake_run
    out = tmp_path / "models"
    assert cli.main(["export", str(run), "--out", str(out), "--name", "demo", "--opset", "17"]) == 0
    manifest = load_manifest(out)
    assert sorted(m.name for m in manifest.models) == ["demo-cycle-add", "demo-cycle-remove"]
    assert {m.opset for m in manifest.models} == {17}
    assert "wrote" in capsys.readouterr().out


def test_cli_says_whether_a_model_serves_by_default_and_default_puts_it_first(fake_run, tmp_path, capsys):
    """Exported beside a folder's own cycle models, a run's models join last: requests choose them by name,
    as the CLI says; --default moves them before the others of their task; a re-export keeps the place."""
    run, _ = fake_run
    out = tmp_path / "models"
    assert cli.main(["export", str(run), "--out", str(out), "--name", "shipped", "--opset", "17"]) == 0
    assert "it serves cycle-add by default" in capsys.readouterr().out
    assert cli.main(["export", str(run), "--out", str(out), "--name", "mine", "--opset", "17"]) == 0
    said = capsys.readouterr().out
    assert "requests choose it by name (model=mine-cycle-add): another model of its task comes first" in said
    assert [m.name for m in load_manifest(out).models] == ["shipped-cycle-add", "shipped-cycle-remove",
                                                          "mine-cycle-add", "mine-cycle-remove"]
    assert cli.main(["export", str(run), "--out", str(out), "--name", "mine", "--opset", "17", "--default",
                     "--replace"]) == 0
    assert "it serves cycle-remove by default" in capsys.readouterr().out
    manifest = load_manifest(out)
    assert [m.name for m in manifest.models] == ["mine-cycle-add", "shipped-cycle-add", "mine-cycle-remove",
                                                "shipped-cycle-remove"]
    assert manifest.serves_by_default("shipped-cycle-add") == []
    assert cli.main(["export", str(run), "--out", str(out), "--name", "mine", "--opset", "17", "--replace"]) == 0
    assert [m.name for m in load_manifest(out).models][0] == "mine-cycle-add"  # a plain re-export keeps its place


def test_cli_step_exports_that_kept_checkpoint(fake_run, tmp_path):
    run, runs = fake_run
    runs[run, 4] = [toy("segment", "seg-at-4")]
    out = tmp_path / "models"
    assert cli.main(["export", str(run), "--out", str(out), "--step", "4"]) == 0
    assert [m.name for m in load_manifest(out).models] == ["seg-at-4"]


def test_cli_refuses_a_name_the_folder_has_unless_replace_and_says_replaced(fake_run, tmp_path, monkeypatch, capsys):
    """QA: `dermagan export RUN` (default name eczema-add, whatever the run folder is called) replaced the shipped
    128 px model with a 32 px toy, exit 0, "wrote ..."; and `--name x1` put a segmenter over another folder's add
    model x1. An existing name is now refused before any export work, naming the model that would go and both
    ways out; the folder stays byte for byte as it was. `--replace` replaces it and says "replaced"."""
    run, runs = fake_run
    out = tmp_path / "models"
    assert cli.main(["export", str(run), "--out", str(out), "--opset", "17"]) == 0
    ex.export_model(toy("add", "x1"), out, opset=17)
    old = load_manifest(out)
    before = _folder(out)
    capsys.readouterr()

    def no_export_work(*args, **kwargs):
        raise AssertionError("exported before refusing")

    runs[run, 4] = [toy("segment")]
    with monkeypatch.context() as m:
        m.setattr(ex, "prepare", no_export_work)
        assert cli.main(["export", str(run), "--out", str(out), "--opset", "17"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"dermagan export: refused, nothing was written: {out / 'manifest.json'} already has "
                              "models of the names this export would write: 'cycle-add' (cycle-add, version 1, "
                              "16x16 px, file cycle-add.onnx, trained on toy, created ")
        assert "recipe `pytest`); 'cycle-remove' (cycle-remove, " in err
        assert "pass --name OTHER to export beside them (with several models per run OTHER is their prefix" in err
        assert "or --replace to replace them" in err
        assert cli.main(["export", str(run), "--step", "4", "--name", "x1", "--out", str(out), "--opset", "17"]) == 1
        err = capsys.readouterr().err
        assert "already has a model of the name this export would write: 'x1' (add, version 1, 16x16 px, file " \
               "x1.onnx" in err and "--name OTHER to export beside it, or --replace to replace it" in err
    assert _folder(out) == before  # no file, entry or temporary file changed or added

    assert cli.main(["export", str(run), "--out", str(out), "--opset", "17", "--replace"]) == 0
    said = capsys.readouterr().out
    new = load_manifest(out, verify=True)
    for name in ("cycle-add", "cycle-remove"):
        assert f"replaced {out / (name + '.onnx')} ({name}, sha256 {new.get(name).sha256[:12]}; the one replaced: " \
               f"sha256 {old.get(name).sha256[:12]})" in said
    assert "wrote" not in said
    assert [m.name for m in new.models] == [m.name for m in old.models]  # in place: the order picks who serves
    assert new.get("x1") == old.get("x1")
    assert cli.main(["export", str(run), "--out", str(out), "--opset", "17", "--replace", "--name", "new"]) == 0
    assert capsys.readouterr().out.count("wrote ") == 2  # --replace with names not there yet: "wrote"


def test_an_unfinished_run_is_exported_with_a_note_and_its_step_in_the_recipe(tmp_path, capsys):
    """QA: a run stopped at step 407 of `--steps 2000` exported silently, its entry's recipe saying
    `--steps 2000` and nothing of step 407. The export now notes it, and the recipe records the step (a shell
    comment: the command still runs as it stands); once the run has finished, neither."""
    from toy_triplets import run_tiny

    run, out = tmp_path / "run", tmp_path / "models"
    recipe = "dermagan train segment --preset tiny --steps 6"
    run_tiny("segment", run, steps=6, until=2, ckpt_every=100, recipe=recipe)
    assert cli.main(["export", str(run), "--out", str(out), "--opset", "17"]) == 0
    err = capsys.readouterr().err
    assert f"dermagan export: note: {run} is at step 2 of 6 (unfinished): exporting step 2" in err
    assert f"`dermagan train segment --out {run} --resume` continues the run" in err
    (entry,) = load_manifest(out, verify=True).models
    assert entry.recipe == f"{recipe}  # exported at step 2 of 6"
    stored = json.loads(metadata_props_of(out / entry.file)["dermagan.manifest"])
    assert stored["recipe"] == entry.recipe  # the file says it too

    run_tiny("segment", run, steps=6, resume=True, ckpt_every=100, recipe=recipe)
    assert cli.main(["export", str(run), "--out", str(out), "--opset", "17", "--replace"]) == 0
    assert "note:" not in capsys.readouterr().err
    assert load_manifest(out, verify=True).get(entry.name).recipe == recipe


def metadata_props_of(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_cli_refusal_exits_non_zero_with_a_message(fake_run, tmp_path, capsys):
    run, runs = fake_run
    runs[run] = [Toy("cycle-add", "cycle-add", BatchStatsTranslator().eval(), {"image": _img()}, _facts())]
    out = tmp_path / "models"
    assert cli.main(["export", str(run), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "refused, nothing was written" in err and "depends on the other images" in err
    assert not out.exists()
    assert cli.main(["export", str(tmp_path / "nope"), "--out", str(out)]) == 1
    assert "no such run folder" in capsys.readouterr().err
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(b"")
    assert cli.main(["export", str(last), "--out", str(out)]) == 1
    assert "not a checkpoint file; choose a kept checkpoint with --step N or --best" in capsys.readouterr().err
    a_file = tmp_path / "sheet.png"
    a_file.write_bytes(b"x")
    runs[run] = [toy("cycle-add")]
    assert cli.main(["export", str(run), "--out", str(a_file)]) == 1
    assert "sheet.png: not a folder (--out names the models folder" in capsys.readouterr().err
    assert cli.main(["export", str(run), "--out", str(out), "--name", "a/b"]) == 1
    err = capsys.readouterr().err
    assert "model name 'a/b': a name is lower-case letters" in err and "pydantic" not in err
    assert a_file.read_bytes() == b"x" and not out.exists()


def test_exporting_a_checkpoint_again_writes_the_same_bytes(tmp_path, monkeypatch):
    """The entry's `created` is when the checkpoint was saved (or SOURCE_DATE_EPOCH), not when it was
    exported: the same checkpoint exported twice gives the same ONNX file and sha256."""
    from toy_triplets import run_tiny

    from dermagan.training.checkpoint import last_checkpoint, load

    from dermagan.training.checkpoint import created_at

    run = tmp_path / "run"
    run_tiny("segment", run, steps=2, ckpt_every=100)
    state = load(last_checkpoint(run))
    first, second = tmp_path / "a", tmp_path / "b"
    assert cli.main(["export", str(run), "--out", str(first)]) == 0
    assert cli.main(["export", str(run), "--out", str(second)]) == 0
    (a,), (b,) = load_manifest(first).models, load_manifest(second).models
    assert a.created == b.created == state["saved_at"] and a.sha256 == b.sha256
    assert (first / a.file).read_bytes() == (second / b.file).read_bytes()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # the reproducible-builds convention wins
    assert created_at(state, last_checkpoint(run)) == "2023-11-14T22:13:20+00:00"
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    older = {k: v for k, v in state.items() if k != "saved_at"}  # a checkpoint from before saved_at: its file's time
    assert created_at(older, last_checkpoint(run)).startswith(a.created[:10])


def test_two_exports_into_one_folder_at_once_keep_both_entries(tmp_path, monkeypatch):
    """Two `dermagan export` into one folder at the same time: each reads the manifest, adds its entry and
    saves; without the folder's lock the later save dropped the other's entry (the file stayed, unlisted)."""
    import threading
    import time

    out = tmp_path / "models"
    prepared = [ex.prepare(toy("add", "first-add"), "first-add", 17), ex.prepare(toy("segment", "first-seg"), "first-seg", 17)]
    read = ex.existing_manifest

    def slow_read(folder):  # widen the read-modify-write window, as a slow disk or a big manifest would
        m = read(folder)
        time.sleep(0.3)
        return m

    monkeypatch.setattr(ex, "existing_manifest", slow_read)
    threads = [threading.Thread(target=ex.write, args=(out, [p])) for p in prepared]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(m.name for m in load_manifest(out, verify=True).models) == ["first-add", "first-seg"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "the lock leaves nothing in the folder"


# ----------------------------------------------------------------------------- a generator of one's own classes


class ToyGenerator(nn.Module):
    """z (+ label) -> image: what a generator trained on one's own class folders exports."""

    def __init__(self, n_labels: int, z_dim: int = 4):
        super().__init__()
        self.lin = nn.Linear(z_dim, 3 * RES * RES)
        self.emb = nn.Embedding(n_labels, 3 * RES * RES) if n_labels > 1 else None

    def forward(self, z, label=None):
        y = self.lin(z) + (self.emb(label) if self.emb is not None else 0)
        return torch.tanh(y).view(-1, 3, RES, RES)


def toy_generator(name: str, labels: list[str]) -> Toy:
    inputs = {"z": torch.randn(1, 4), **({"label": torch.zeros(1, dtype=torch.int64)} if len(labels) > 1 else {})}
    facts = _facts(dynamic_hw=False, size_multiple=RES, z_dim=4, labels=labels)
    return Toy("generate", name, ToyGenerator(len(labels)).eval(), inputs, facts)


def test_a_generator_of_class_folders_trains_exports_and_loads(tmp_path):
    """`dermagan train generate --data` on ISIC-style class folders (MEL/, NV/) labels the generator with the
    folders' names; the export once refused them ("unknown kinds ['MEL', 'NV']") after the whole training."""
    from PIL import Image

    data = tmp_path / "isic"
    rng = np.random.default_rng(0)
    for cls in ("MEL", "NV"):
        (data / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (TRAINED, TRAINED, 3), dtype=np.uint8)).save(data / cls / f"{i}.png")
    run, out = tmp_path / "run", tmp_path / "models"
    assert cli.main(["train", "generate", "--preset", "tiny", "--data", str(data), "--steps", "2", "--out", str(run),
                     "--quiet"]) == 0
    assert cli.main(["export", str(run), "--out", str(out), "--opset", "17"]) == 0
    (entry,) = load_manifest(out, verify=True).models
    assert entry.task == "generate" and entry.labels == ["MEL", "NV"] and set(entry.inputs) == {"z", "label"}
    assert load_manifest(out).serves_by_default(entry.name) == ["MEL", "NV"]


def test_a_one_class_generator_gets_a_model_name_from_its_label(tmp_path):
    """A one-class generator's run names it LABEL-generate; a label in upper case or with spaces still gives a
    valid model name (lower case, "-"), and the label itself is kept as it is."""
    assert ex.model_name("MEL-generate") == "mel-generate"
    assert ex.model_name("Atopic Dermatitis-generate") == "atopic-dermatitis-generate"
    assert ex.model_name("lesion-generate") == "lesion-generate"
    e = ex.export_model(toy_generator("Atopic Dermatitis-generate", ["Atopic Dermatitis"]), tmp_path, opset=17)
    assert (e.name, e.file, e.labels) == ("atopic-dermatitis-generate", "atopic-dermatitis-generate.onnx",
                                          ["Atopic Dermatitis"])
    load_manifest(tmp_path, verify=True)


@pytest.mark.parametrize("labels, why", [(["MEL", "mel"], r"labels \['MEL', 'mel'\] repeat a name"),
                                         (["a/b", "NV"], r"label\(s\) \['a/b'\] are not usable kind names")])
def test_a_generator_with_unusable_labels_is_refused_before_export_work(tmp_path, labels, why):
    with pytest.raises(ex.ExportError, match=f"own-generate: {why}"):
        ex.export_model(toy_generator("own-generate", labels), tmp_path / "models", opset=17)
    assert not (tmp_path / "models").exists()


# ----------------------------------------------------------------------------- a write that fails partway


def _folder(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir()}


def _disk_full(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_manifest_save_leaves_the_old_models_and_manifest(tmp_path, monkeypatch):
    """The manifest save failing (a full disk) after the new files are in place: the old files are put back,
    so the folder still loads and serves what it served (it once held the new file under the old sha256)."""
    ex.export_models([toy("cycle-add"), toy("cycle-remove")], tmp_path, opset=17)
    before = _folder(tmp_path)
    monkeypatch.setattr(ex, "save_manifest", _disk_full)
    with pytest.raises(OSError, match="No space left"):  # a re-export, and a new name beside it
        ex.export_models([toy("cycle-add"), toy("cycle-remove"), toy("segment", "new-seg")], tmp_path, opset=17,
                         replace=True)
    assert _folder(tmp_path) == before  # no new-seg.onnx, no temporary file, no old copy
    assert sorted(m.name for m in load_manifest(tmp_path, verify=True).models) == ["cycle-add", "cycle-remove"]


def test_a_file_write_that_fails_partway_changes_nothing(tmp_path, monkeypatch):
    """The second file of a pair failing to write: the first is not put in place either."""
    ex.export_models([toy("cycle-add"), toy("cycle-remove")], tmp_path, opset=17)
    before = _folder(tmp_path)
    write = ex.write_synced
    calls = []

    def second_fails(path, data):
        calls.append(path)
        if len(calls) == 2:
            write(path, data[: len(data) // 2])  # a part written, then the disk is full
            _disk_full()
        write(path, data)

    monkeypatch.setattr(ex, "write_synced", second_fails)
    with pytest.raises(OSError, match="No space left"):
        ex.export_models([toy("cycle-add"), toy("cycle-remove")], tmp_path, opset=17, replace=True)
    assert _folder(tmp_path) == before
    load_manifest(tmp_path, verify=True)


def test_a_rename_that_fails_partway_puts_the_old_files_back(tmp_path, monkeypatch):
    ex.export_models([toy("cycle-add"), toy("cycle-remove")], tmp_path, opset=17)
    before = _folder(tmp_path)
    replace = Path.replace

    def second_rename_fails(self, target):
        if Path(target).name == "cycle-remove.onnx" and ".tmp-" in self.name:
            raise OSError(5, "Input/output error")
        return replace(self, target)

    monkeypatch.setattr(Path, "replace", second_rename_fails)
    with pytest.raises(OSError, match="Input/output error"):
        ex.export_models([toy("cycle-add"), toy("cycle-remove")], tmp_path, opset=17, replace=True)
    monkeypatch.undo()
    assert _folder(tmp_path) == before
    load_manifest(tmp_path, verify=True)


def test_cli_says_the_disk_is_full_and_the_folder_still_loads(fake_run, tmp_path, monkeypatch, capsys):
    run, _ = fake_run
    out = tmp_path / "models"
    assert cli.main(["export", str(run), "--out", str(out), "--opset", "17"]) == 0
    before = _folder(out)
    monkeypatch.setattr(ex, "save_manifest", _disk_full)
    assert cli.main(["export", str(run), "--out", str(out), "--opset", "17", "--replace"]) == 1
    assert "the disk is full" in capsys.readouterr().err
    assert _folder(out) == before
    load_manifest(out, verify=True)
