"""The model contract shared by training/ and service/."""

import json

import pytest

from dermagan.manifest import (
    Manifest,
    ManifestError,
    ModelEntry,
    load_manifest,
    metadata_props,
    save_manifest,
    sha256_file,
)

IMG = {"dtype": "float32", "shape": ["N", 3, "H", "W"], "range": "[-1, 1]"}
MASK = {"dtype": "float32", "shape": ["N", 1, "H", "W"], "range": "{0, 1}"}


def entry(tmp_path, name="eczema-add", task="add", **kw):
    f = tmp_path / f"{name}.onnx"
    f.write_bytes(b"not really onnx, but hashed all the same")
    fields = dict(name=name, task=task, version="1", file=f.name, sha256=sha256_file(f),
                  resolution=(128, 128), size_multiple=16,
                  inputs={"image": IMG, "mask": MASK}, outputs={"image": IMG})
    fields.update(kw)
    return ModelEntry(**fields)


def test_round_trip_and_verify(tmp_path):
    m = Manifest(models=[entry(tmp_path)])
    save_manifest(tmp_path, m)
    back = load_manifest(tmp_path)
    assert back == m
    assert back.get("eczema-add").task == "add"
    assert [e.name for e in back.by_task("add")] == ["eczema-add"]


def test_sha_mismatch_and_missing_file_name_the_file(tmp_path):
    save_manifest(tmp_path, Manifest(models=[entry(tmp_path)]))
    (tmp_path / "eczema-add.onnx").write_bytes(b"tampered")
    with pytest.raises(ManifestError, match=r"eczema-add\.onnx: sha256 mismatch"):
        load_manifest(tmp_path)
    (tmp_path / "eczema-add.onnx").unlink()
    with pytest.raises(ManifestError, match=r"eczema-add\.onnx: model file .* is missing"):
        load_manifest(tmp_path)


def test_bad_json_and_schema_errors_name_the_manifest(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"models": [{"name": "x"}]}))
    with pytest.raises(ManifestError, match="does not match the manifest schema") as e:
        load_manifest(tmp_path)
    # one line (a service's start-up error is one line on stderr), each problem named at its place
    assert "\n" not in str(e.value) and "models.0.task: Field required" in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(inputs={"image": IMG}), "missing \\['mask'\\]"),
        (dict(file="../evil.onnx"), "plain file name"),
        (dict(resolution=(100, 128)), "multiples of size_multiple"),
        (dict(task="generate", inputs={"z": IMG}, z_dim=None), "z_dim"),
        (dict(task="generate", inputs={"z": IMG}, z_dim=100, labels=[]), "needs labels"),
        (dict(task="generate", inputs={"z": IMG}, z_dim=100, labels=["../x"]), r"\['\.\./x'\] are not usable kind names"),
        (dict(task="generate", inputs={"z": IMG}, z_dim=100, labels=["atopic dermatitis "]), "not usable kind names"),
        (dict(task="generate", inputs={"z": IMG}, z_dim=100, labels=["x" * 65]), "at most 64 characters"),
        (dict(task="generate", inputs={"z": IMG, "label": IMG}, z_dim=100, labels=["MEL", "mel"]),
         r"labels \['MEL', 'mel'\] repeat a name \(ignoring case\)"),
        (dict(task="generate", inputs={"z": IMG}, z_dim=100, labels=["hand", "lesion"]), "'label' input"),
    ],
)
def test_contract_violations_are_refused(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        entry(tmp_path, **kw)


def test_duplicate_names_refused_and_upsert_replaces(tmp_path):
    e = entry(tmp_path)
    with pytest.raises(ValueError, match="unique"):
        Manifest(models=[e, e])
    m = Manifest(models=[e])
    m.upsert(e.model_copy(update={"version": "2"}))
    assert [x.version for x in m.models] == ["2"]


def test_upsert_keeps_the_order_that_decides_which_model_serves(tmp_path):
    a, b, c = (entry(tmp_path).model_copy(update={"name": n}) for n in ("first-add", "second-add", "third-add"))
    m = Manifest(models=[a, b])
    m.upsert(a.model_copy(update={"version": "2"}))  # re-exported: stays first, so it still serves add
    assert [(x.name, x.version) for x in m.models] == [("first-add", "2"), ("second-add", "1")]
    m.upsert(c)  # a new name joins at the end
    assert [x.name for x in m.models] == ["first-add", "second-add", "third-add"]


def test_metadata_props_carry_the_facts(tmp_path):
    props = metadata_props(entry(tmp_path))
    assert props["dermagan.task"] == "add"
    facts = json.loads(props["dermagan.manifest"])
    assert facts["resolution"] == [128, 128] and "sha256" not in facts


@pytest.mark.parametrize("labels", [["eczema", "hand", "lesion"], ["MEL", "NV"], ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"],
                                    ["atopic dermatitis", "1. Eczema 1677"], ["scc_2019-v2"]])
def test_a_generator_of_ones_own_classes_is_a_valid_entry(tmp_path, labels):
    """`dermagan train generate --data` labels a generator with its class folders' names, a labels CSV's classes
    or a flat folder's name: the contract takes any such name, not just the renderer's kinds."""
    inputs = {"z": IMG, **({"label": IMG} if len(labels) > 1 else {})}
    m = Manifest(models=[entry(tmp_path, name="own-generate", task="generate", inputs=inputs, outputs={"image": IMG},
                               z_dim=8, labels=labels)])
    save_manifest(tmp_path, m)
    back = load_manifest(tmp_path)
    assert back.get("own-generate").labels == labels
    assert back.serves_by_default("own-generate") == labels


def test_a_failed_manifest_save_keeps_the_old_manifest_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import errno
    import os

    old = Manifest(models=[entry(tmp_path)])
    save_manifest(tmp_path, old)
    before = (tmp_path / "manifest.json").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        save_manifest(tmp_path, Manifest())
    assert (tmp_path / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eczema-add.onnx", "manifest.json"]
