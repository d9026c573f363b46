#!/usr/bin/env python3
"""Pack what bench/gpu-checks.sh needs on a GPU machine that reaches no package registry.

For an NVIDIA machine whose image already has Python, torch, numpy and the CUDA/cuDNN libraries (the
nvidia-* wheels) but not onnxruntime-gpu nor this project's API stack, and which takes files only in
pieces of a limited size (docs/TEAM_NOTES.md, "The GPU machine"). It writes two folders:

    OUT/a/  ort.part00 (first half of onnxruntime-gpu, tar.xz), whl/ (the API's wheels and dermagan's),
            imagecodecs-png.tar.xz (imagecodecs with its PNG codec only: the whole wheel is 28 MB)
    OUT/b/  ort.part01 (second half), models/ (the named shipped models and a manifest.json of them)

onnxruntime-gpu's CUDA provider library is mostly fatbinary: kernels for six GPU generations. The
payloads of the entries for other generations than --sm are zeroed in place (headers and offsets
kept, so the file's layout is unchanged and the driver still finds the --sm code); zeros compress to
nothing, and the wheel's 255 MB become ~70 MB. Such a library runs on --sm GPUs only.

On the machine, with both folders carried (a first, b in a second call while it is warm):

    cat a/ort.part00 b/ort.part01 | python3 -c "import lzma,sys,shutil; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)" | tar x -C /tmp/site
    python3 -m pip install -q --no-index --no-deps --target /tmp/site a/whl/*.whl
    tar xJf a/imagecodecs-png.tar.xz -C /tmp/site
    PYTHONPATH=/tmp/site bash bench/gpu-checks.sh serve OUT b/models

    python scripts/gpu-bundle.py --out .dev --models generate,eczema-add,eczema-remove,eczema-segment
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FATBIN_MAGIC = 0xBA55ED50
#: what `dermagan serve` and the bench scripts import beyond the machine's own packages, at this venv's versions
API = ("fastapi", "starlette", "pydantic", "pydantic-core", "annotated-types", "annotated-doc", "typing-inspection",
       "typing-extensions", "uvicorn", "httptools", "uvloop", "h11", "click", "anyio", "idna", "httpx", "httpcore",
       "python-multipart", "prometheus-client", "fastapi-offline", "python-json-logger", "pillow-heif",
       "opentelemetry-api", "importlib-metadata", "zipp", "dominate")


def keep_one_arch(data: bytearray, sm: int) -> tuple[int, int]:
    """Zero the payload of every fatbinary entry in the ELF's .nv_fatbin section not built for sm_`sm`.

    Returns (bytes zeroed, bytes of sm code kept). Raises ValueError if the section does not parse as
    a sequence of fatbinaries whose entries add up to their declared sizes.
    """
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ValueError("not a 64-bit ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = sections[shstrndx][4]

    def name(sh: tuple[int, ...]) -> bytes:
        start = names_at + sh[0]
        return bytes(data[start:data.index(b"\0", start)])

    fatbin = next((sh for sh in sections if name(sh) == b".nv_fatbin"), None)
    if fatbin is None:
        raise ValueError("no .nv_fatbin section")
    p, end = fatbin[4], fatbin[4] + fatbin[5]
    zeroed = kept = 0
    while p < end:
        magic, _version, header, size = struct.unpack_from("<IHHQ", data, p)
        if magic != FATBIN_MAGIC:
            if bytes(data[p:p + 8]) == bytes(8):  # alignment padding between fatbinaries
                p += 8
                continue
            raise ValueError(f"unexpected bytes at .nv_fatbin+{p - fatbin[4]:#x}")
        q, stop = p + header, p + header + size
        while q < stop:
            _kind, _ver, entry_header, payload = struct.unpack_from("<HHIQ", data, q)
            arch, = struct.unpack_from("<I", data, q + 28)
            body = q + entry_header
            if arch == sm:
                kept += payload
            else:
                data[body:body + payload] = bytes(payload)
                zeroed += payload
            q = body + payload
        if q != stop:
            raise ValueError(f"fatbinary at .nv_fatbin+{p - fatbin[4]:#x}: entries overrun its size")
        p = stop
    if not kept:
        raise ValueError(f"no sm_{sm} code in the library: it would not run there")
    return zeroed, kept


def download(names: list[str], dest: Path, python: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", python, "--implementation", "cp", "-d", str(dest),
                    *(f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                                  "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64", "any")),
                    *names], check=True)


#: the files of imagecodecs that `import imagecodecs; imagecodecs.png_encode(...)` loads (its Python
#: modules, the shared extensions, the PNG extension and the libpng it links; zlib is the system's)
IMAGECODECS_PNG = re.compile(r"^(imagecodecs/([^/]*\.pyi?|_shared[^/]*\.so|_imcd[^/]*\.so|_png[^/]*\.so|py\.typed)"
                             r"|imagecodecs\.libs/libpng[^/]*|[^/]*\.dist-info/(METADATA|licenses/.*))$")


def wheel_tar_xz(wheel: Path, keep: Callable[[str], object] = lambda name: True,
                 edit: Callable[[str, bytearray], None] | None = None) -> bytes:
    """The files of `wheel` that `keep` names, with their modes and times, as an xz-compressed tar; `edit`
    may change a file's bytes in place first."""
    packed = io.BytesIO()
    with zipfile.ZipFile(wheel) as z, tarfile.open(fileobj=packed, mode="w") as tar:
        for info in z.infolist():
            if info.is_dir() or not keep(info.filename):
                continue
            body = bytearray(z.read(info))
            if edit is not None:
                edit(info.filename, body)
            member = tarfile.TarInfo(info.filename)
            member.size, member.mode = len(body), ((info.external_attr >> 16) & 0o7777) or 0o644
            member.mtime = int(time.mktime((*info.date_time, 0, 0, -1)))
            tar.addfile(member, io.BytesIO(bytes(body)))
    return lzma.compress(packed.getvalue(), preset=6)


def imagecodecs_png(dest: Path, python: str) -> None:
    """imagecodecs (this venv's version) for `python`, cut down to its PNG codec, as a tar.xz at `dest`."""
    with tempfile.TemporaryDirectory() as tmp:
        download([pinned("imagecodecs")], Path(tmp), python)
        wheel = next(Path(tmp).glob("imagecodecs-*.whl"))
        dest.write_bytes(wheel_tar_xz(wheel, keep=IMAGECODECS_PNG.match))
    print(f"{wheel.name}: its PNG codec alone {dest.stat().st_size / 1e6:.1f} MB")


def pinned(name: str) -> str:
    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for a/ and b/ (keep it git-ignored)")
    ap.add_argument("--ort", default="1.31.1", help="onnxruntime-gpu version (default 1.31.1, CUDA 13)")
    ap.add_argument("--python", default="3.12", help="the machine's Python (default 3.12)")
    ap.add_argument("--sm", type=int, default=90, help="the GPU's compute capability x 10 (H100/H200: 90)")
    ap.add_argument("--models", default="generate,eczema-add,eczema-remove,eczema-segment",
                    help="shipped models to pack into b/models (comma-separated)")
    ap.add_argument("--first-part-mb", type=float, default=44.5, help="size of ort.part00 (the rest is ort.part01)")
    args = ap.parse_args(argv)

    a, b = args.out / "a", args.out / "b"
    for d in (a, b):
        shutil.rmtree(d, ignore_errors=True)
    (a / "whl").mkdir(parents=True)
    (b / "models").mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        download([f"onnxruntime-gpu=={args.ort}"], tmp, args.python)
        wheel = next(tmp.glob("onnxruntime_gpu-*.whl"))

        def prune(name: str, body: bytearray) -> None:
            if name.endswith("libonnxruntime_providers_cuda.so"):
                zeroed, kept = keep_one_arch(body, args.sm)
                print(f"{name}: kept {kept / 1e6:.0f} MB of sm_{args.sm} code, zeroed {zeroed / 1e6:.0f} MB")

        xz = wheel_tar_xz(wheel, edit=prune)
        cut = int(args.first_part_mb * 1e6)
        (a / "ort.part00").write_bytes(xz[:cut])
        (b / "ort.part01").write_bytes(xz[cut:])
        print(f"onnxruntime-gpu {args.ort}: {wheel.stat().st_size / 1e6:.0f} MB wheel -> {len(xz) / 1e6:.1f} MB")
    download([pinned(n) for n in API], a / "whl", args.python)
    imagecodecs_png(a / "imagecodecs-png.tar.xz", args.python)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(a / "whl"),
                    str(ROOT)], check=True)
    manifest = json.loads((ROOT / "models" / "manifest.json").read_text())
    wanted = set(args.models.split(","))
    manifest["models"] = [m for m in manifest["models"] if m["name"] in wanted]
    missing = wanted - {m["name"] for m in manifest["models"]}
    if missing:
        raise SystemExit(f"gpu-bundle: no shipped model named {', '.join(sorted(missing))}")
    for m in manifest["models"]:
        shutil.copy2(ROOT / "models" / m["file"], b / "models" / m["file"])
    (b / "models" / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    for d in (a, b):
        print(f"{d}: {sum(f.stat().st_size for f in d.rglob('*') if f.is_file()) / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
