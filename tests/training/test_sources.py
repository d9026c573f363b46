"""training/sources.py: the data a run trains on, and its in-memory cache (`Memo`): bitwise the samples it
caches, sized by what a sample holds, filled ahead in worker processes -- for the renderer's data and a folder's
photographs alike."""

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dermagan.cli import main
from dermagan.training import sources
from dermagan.training.config import modern
from dermagan.training.data import DataError, SynthDataset

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "synth"


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(v, b[k]) if torch.is_tensor(v) else v == b[k] for k, v in a.items())


def test_memo_returns_bitwise_the_rendered_samples():
    ds = SynthDataset("hand", size=32, length=2)
    memo = sources.Memo(ds)
    for _ in range(2):  # first render, then from the cache
        assert _same(ds[1], memo[1])


def test_memo_fill_renders_in_worker_processes_bitwise_what_it_would_render_itself():
    ds = SynthDataset("hand", size=32, length=5)
    memo = sources.Memo(ds)
    memo[3]  # one already cached stays as it is
    memo.fill(2)
    assert sorted(memo.cache) == list(range(5))
    for i in range(5):
        assert _same(ds[i], memo[i]), i


def test_a_large_synthetic_set_is_cached_by_its_real_size_and_rendered_ahead_in_processes(monkeypatch, caplog):
    filled = []
    monkeypatch.setattr(sources.Memo, "fill", lambda self, processes: filled.append((len(self), processes)))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    gen = modern("generate")
    # the GPU recipe's generator data: 3 x 4000 images at 128 px, 590 MB as uint8 images (8 bytes a pixel, as
    # a triplet holds, would be 1.6 GB: over the cache's 1 GiB, re-rendered every epoch)
    cfg = replace(gen, size=128, data=replace(gen.data, kinds=("eczema", "hand", "lesion"), length=4000))
    dataset, labels = sources.build_dataset(cfg)
    assert isinstance(dataset, sources.Memo) and labels == ["eczema", "hand", "lesion"]
    assert dataset.nbytes() < sources.MEMO_MAX_BYTES and filled == [(12000, 4)]
    filled.clear()
    small = replace(cfg, data=replace(cfg.data, length=10))
    assert isinstance(sources.build_dataset(small)[0], sources.Memo) and filled == []  # rendered as drawn
    huge = replace(cfg, data=replace(cfg.data, length=10_000))
    with caplog.at_level(logging.WARNING, logger="dermagan.training"):
        assert not isinstance(sources.build_dataset(huge)[0], sources.Memo) and filled == []
    assert "the 30000 samples (1.5 GB as 8-bit) are over the in-memory cache's 1 GB" in caplog.text
    assert "--workers N reads them in N processes" in caplog.text
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # torchrun's one thread a rank: --workers render it
    sources.build_dataset(replace(cfg, data=replace(cfg.data, workers=3)))
    assert filled == [(12000, 3)]


def test_cache_gb_keeps_a_larger_set_in_memory_or_none_at_all(monkeypatch, caplog):
    filled = []
    monkeypatch.setattr(sources.Memo, "fill", lambda self, processes: filled.append((len(self), processes)))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(sources, "memory_available", lambda: 16 << 30)
    gen = modern("generate")
    # 32000 hands at 128 px: 1.6 GB as 8-bit, over the default 1 GB
    cfg = replace(gen, size=128, data=replace(gen.data, kinds=("hand",), length=32000))
    with caplog.at_level(logging.WARNING, logger="dermagan.training"):
        assert not isinstance(sources.build_dataset(cfg)[0], sources.Memo) and filled == []
    # the warning names the setting and a value that holds this set
    assert "are over the in-memory cache's 1 GB" in caplog.text and "--cache-gb 1.6 keeps them in memory" in caplog.text
    caplog.clear()
    dataset = sources.build_dataset(replace(cfg, data=replace(cfg.data, cache_gb=1.6)))[0]
    assert isinstance(dataset, sources.Memo) and filled == [(32000, 2)] and caplog.text == ""
    # 0: never cached, not even a small set
    small = replace(cfg, data=replace(cfg.data, length=10, cache_gb=0.0))
    assert isinstance(sources.build_dataset(small)[0], SynthDataset | sources.KindLabelled)


def test_a_set_the_free_memory_cannot_hold_is_not_cached(monkeypatch, caplog):
    monkeypatch.setattr(sources.Memo, "fill", lambda self, processes: pytest.fail("filled a set memory cannot hold"))
    monkeypatch.setattr(sources, "memory_available", lambda: 1 << 30)
    gen = modern("generate")
    cfg = replace(gen, size=128, data=replace(gen.data, kinds=("hand",), length=20000, cache_gb=4.0))  # 0.98 GB
    with caplog.at_level(logging.WARNING, logger="dermagan.training"):
        assert not isinstance(sources.build_dataset(cfg)[0], sources.Memo)
    assert "are more than this machine's free memory (1.1 GB available) can spare" in caplog.text


def test_memory_available_reads_meminfo_and_the_tighter_cgroup_limit(tmp_path, monkeypatch):
    from dermagan import cpus

    (tmp_path / "meminfo").write_text("MemTotal: 32000000 kB\nMemAvailable: 20000000 kB\n")
    (tmp_path / "cgroup").write_text("0::/box\n")
    (tmp_path / "cg" / "box").mkdir(parents=True)
    left = lambda: sources.memory_available(tmp_path / "meminfo")  # noqa: E731
    monkeypatch.setattr(sources, "cgroup_memory_left", lambda: cpus.cgroup_memory_left(tmp_path / "cg", tmp_path / "cgroup"))
    (tmp_path / "cg" / "box" / "memory.max").write_text("max\n")
    assert left() == 20000000 * 1024  # no limit: MemAvailable
    (tmp_path / "cg" / "box" / "memory.max").write_text(f"{8 << 30}\n")
    (tmp_path / "cg" / "box" / "memory.current").write_text(f"{3 << 30}\n")
    assert left() == 5 << 30  # the container's limit is nearer
    (tmp_path / "cgroup").write_text("4:memory:/box\n0::/\n")  # v1
    (tmp_path / "cg" / "memory" / "box").mkdir(parents=True)
    (tmp_path / "cg" / "memory" / "box" / "memory.limit_in_bytes").write_text(f"{6 << 30}\n")
    (tmp_path / "cg" / "memory" / "box" / "memory.usage_in_bytes").write_text(f"{2 << 30}\n")
    assert left() == 4 << 30


@pytest.fixture(scope="module")
def synth_folders(tmp_path_factory):
    """The renderer's paper layout (eczema triplets) and lesions in class folders, 32 px, as files."""
    root = tmp_path_factory.mktemp("folders")
    assert main(["synth", "--no-progress", "--size", "32", "--kind", "eczema", "--count", "6", "--grades", "0,2",
                 "--out", str(root / "eczema")]) == 0
    for i in range(6):
        path = root / "lesions" / ("NV", "MEL")[i % 2] / f"lesion_{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 48, 3), np.uint8)).save(path, quality=90)
    return root


@pytest.mark.parametrize("family, folder, loader", [("add", "eczema", "PairedFolder"), ("cycle", "eczema", "UnpairedFolder"),
                                                    ("generate", "lesions", "ClassFolder")])
def test_a_folders_photographs_are_cached_bitwise_as_read_and_read_ahead_in_workers(synth_folders, monkeypatch,
                                                                                      family, folder, loader):
    from dermagan.training import data

    monkeypatch.setattr(sources, "PRERENDER_MIN", 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    cfg = modern(family)
    cfg = replace(cfg, size=32, data=replace(cfg.data, root=str(synth_folders / folder)))
    dataset, _ = sources.build_dataset(cfg)
    assert isinstance(dataset, sources.Memo) and type(dataset.inner).__name__ == loader
    assert sorted(dataset.cache) == list(range(len(dataset)))  # all read before training, in 2 workers
    plain = getattr(data, loader)(synth_folders / folder, size=32) if loader != "ClassFolder" else dataset.inner
    for i in range(len(dataset)):
        assert _same(dataset[i], plain[i]), i


def test_an_unreadable_photograph_read_ahead_fails_naming_its_file(synth_folders, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(sources, "PRERENDER_MIN", 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    root = tmp_path / "lesions"
    shutil.copytree(synth_folders / "lesions", root)
    bad = root / "MEL" / "lesion_3.jpg"
    bad.write_bytes(bad.read_bytes()[:700])  # its header survives: the folder is listed, reading it fails
    cfg = modern("generate")
    with pytest.raises(DataError, match=r"lesion_3\.jpg: unreadable image") as e:
        sources.build_dataset(replace(cfg, size=32, data=replace(cfg.data, root=str(root))))
    assert "Traceback" not in str(e.value)  # the loader's own error, not a DataLoader worker's report


def test_a_one_kind_generator_keeps_only_what_it_trains_on(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    cfg = modern("generate")
    dataset, labels = sources.build_dataset(replace(cfg, size=32, data=replace(cfg.data, kinds=("hand",), length=4)))
    assert labels == ["hand"] and set(dataset[0]) == {"image", "name", "label"}  # no mask, healthy skin or hand
    assert dataset.nbytes() == 4 * (3 * 32 * 32 + 8)  # 3 bytes a pixel cached, and the label


def test_a_rendered_set_kept_in_the_run_is_read_back_only_for_the_same_set(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setattr(sources, "PRERENDER_MIN", 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    store = tmp_path / "run" / sources.DATA_CACHE
    cfg = modern("generate")
    cfg = replace(cfg, size=32, data=replace(cfg.data, kinds=("hand",), length=3))
    first, _ = sources.build_dataset(cfg, store=store)
    assert store.is_file() and not store.with_name(store.name + ".tmp").exists()
    rendered = []
    real_fill = sources.Memo.fill
    monkeypatch.setattr(sources.Memo, "fill", lambda self, n: (rendered.append(len(self)), real_fill(self, n)))
    again, _ = sources.build_dataset(cfg, store=store)
    assert rendered == [] and sorted(again.cache) == [0, 1, 2]
    assert "read the 3 samples rendered before from" in capsys.readouterr().err
    for i in range(3):
        assert _same(first[i], again[i]) and _same(first.inner[i], again[i]), i
    # another seed, size or length is another set: rendered, and kept in its place
    other = replace(cfg, data=replace(cfg.data, seed=7))
    assert not _same(sources.build_dataset(other, store=store)[0][0], first[0]) and rendered == [3]
    assert _same(sources.build_dataset(other, store=store)[0][0], other_first := sources.build_dataset(other)[0][0])
    assert rendered == [3, 3]  # the last call had no store
    assert other_first["name"] != first[0]["name"]
    # a truncated file is said and rendered again, not trusted
    store.write_bytes(store.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="dermagan.training"):
        assert _same(sources.build_dataset(cfg, store=store)[0][2], first[2])
    assert "is unreadable" in caplog.text and rendered == [3, 3, 3]


def test_a_full_disk_while_keeping_the_rendered_set_is_a_warning_and_training_goes_on(tmp_path, monkeypatch, caplog):
    import shutil
    from collections import namedtuple

    from dermagan.training import checkpoint

    def fails(obj, f):  # what torch's zip writer raises when a write fails: no errno
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(sources, "PRERENDER_MIN", 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(checkpoint.torch, "save", fails)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: namedtuple("usage", "total used free")(10, 10, 0))
    store = tmp_path / "run" / sources.DATA_CACHE
    cfg = modern("generate")
    cfg = replace(cfg, size=32, data=replace(cfg.data, kinds=("hand",), length=3))
    with caplog.at_level(logging.WARNING, logger="dermagan.training"):
        dataset, _ = sources.build_dataset(cfg, store=store)
    assert sorted(dataset.cache) == [0, 1, 2] and list(store.parent.iterdir()) == []  # no partial file left
    assert "could not keep the rendered data in" in caplog.text and "No space left on device" in caplog.text


def test_class_names_that_export_would_refuse_are_refused_before_training(tmp_path):
    """A generator's labels are its class folders' names: one `dermagan export` cannot write (dermagan.manifest's
    check_labels) fails when the data set is built, not after hours of training."""
    for name in ("bad name.", "ok"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8), (200, 150, 120)).save(tmp_path / name / "a.png")
    cfg = modern("generate")
    with pytest.raises(ValueError, match=r"label\(s\) \['bad name\.'\] are not usable kind names"):
        sources.build_dataset(replace(cfg, size=32, data=replace(cfg.data, root=str(tmp_path))))
    (tmp_path / "bad name.").rename(tmp_path / "MEL")
    assert sources.build_dataset(replace(cfg, size=32, data=replace(cfg.data, root=str(tmp_path))))[1] == ["MEL", "ok"]


def test_the_papers_layout_is_not_taken_for_class_folders_of_a_generator():
    """`train generate --data` on the paper's layout (image/, patho/, healthy/) trained a generator of the classes
    'healthy', 'image' and 'patho' -- drawing masks as one of them -- without a word; now it is refused, saying
    which folder to give instead."""
    paper = FIXTURES / "eczema"
    assert (paper / "image").is_dir() and (paper / "patho").is_dir()
    cfg = modern("generate")
    with pytest.raises(ValueError, match=r"is the paper's layout \(image/ with patho/, healthy/\), not class folders: "
                                         r"generate would take \['image', 'patho', 'healthy'\] for classes\. To "
                                         r"generate its photographs, pass --data .*eczema/image \(one flat folder"):
        sources.build_dataset(replace(cfg, size=32, data=replace(cfg.data, root=str(paper))))
    ds, labels = sources.build_dataset(replace(cfg, size=32, data=replace(cfg.data, root=str(paper / "image"))))
    assert labels == ["image"] and len(ds) == len(list((paper / "image").iterdir()))
