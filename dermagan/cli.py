"""The `dermagan` console script.

Each subcommand lives in its own module that exposes `add_arguments(parser)` and `run(args) -> int`.
Only the chosen subcommand's module is imported, so `dermagan serve` never imports torch and
`dermagan synth` never imports onnxruntime.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

#: name -> (module, one-line help). Explicit registry: add a command by adding a line here.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("dermagan.training.synth.cli", "render the procedural skin / eczema / hand / lesion data set"),
    "train": ("dermagan.training.cli", "train a model family: generate | add | remove | cycle | segment"),
    "export": ("dermagan.training.export", "export a trained run to ONNX + a manifest entry (parity-checked)"),
    "evaluate": ("dermagan.training.evaluate", "offline quality metrics of exported models, as JSON and Markdown"),
    "release": ("dermagan.training.release", "retrain, export and evaluate every shipped model from scratch"),
    "gallery": ("dermagan.training.gallery", "render sample grids of the shipped models for docs/"),
    "serve": ("dermagan.service.cli", "serve the models in a folder over HTTP (FastAPI + ONNX Runtime)"),
    "sample": ("dermagan.service.sample", "draw many generated images into class folders, offline (as POST /generate draws them)"),
    "edit": ("dermagan.service.edit", "add / remove eczema or segment it over folders of images, offline (as the service does)"),
    "probe": ("dermagan.service.probe", "is the local `dermagan serve` ready? exit 0 / 1 (a container's HEALTHCHECK)"),
}

EXTRA_FOR = {"dermagan.training": "train", "dermagan.service": "serve"}

#: storage that cannot take what a command writes: a one-line error, not a traceback (each command writes whole
#: files through a temporary name, or checkpoints, so what was written before stays usable)
STORAGE_FULL = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                errno.EROFS: "the file system is read-only"}
#: how each command continues once there is room
AGAIN = {"train": "run it again with --resume to continue from its last checkpoint",
         "release": "run it again: it continues where it stopped",
         "edit": "run it again: it skips the results already written",
         "sample": "run it again: it skips the images already written"}


def _load(name: str):
    module_name = COMMANDS[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        top = e.name.split(".")[0] if e.name else "?"
        if e.name and e.name.startswith("dermagan."):
            raise SystemExit(f"dermagan {name}: not available in this version ({e.name} is missing)") from e
        extra = next((x for p, x in EXTRA_FOR.items() if module_name.startswith(p)), None)
        hint = f"; install it with: pip install 'dermagan[{extra}]'" if extra else ""
        raise SystemExit(f"dermagan {name}: needs the Python package {top!r}, which is not installed{hint}") from e


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="dermagan",
        description="GANs for dermatologic images: synthesise data, train, export to ONNX, serve.",
        epilog="Run 'dermagan COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"dermagan {__import__('dermagan').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    # Parse only the command name first; the command's own module defines its options.
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name = argv[0]
    module = _load(name)
    # allow_abbrev off: an option misspelled or shortened is named in the error, never taken for another that
    # starts alike (`synth --n 6` was `--no-progress` and then "unrecognized arguments: 6")
    cmd_parser = argparse.ArgumentParser(prog=f"dermagan {name}", description=COMMANDS[name][1], allow_abbrev=False)
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C outside what a command handles itself (a training step checkpoints first)
        print(f"dermagan {name}: interrupted" + (f"; {AGAIN[name]}" if name in AGAIN else ""), file=sys.stderr)
        return 130
    except BrokenPipeError:  # `dermagan serve --settings | head`: the reader left; no traceback (Python's own advice)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail again
        return 1
    except OSError as e:
        if e.errno not in STORAGE_FULL:
            raise
        where = f" {e.filename}" if e.filename else ""
        print(f"dermagan {name}: error: cannot write{where}: {STORAGE_FULL[e.errno]} ({e.strerror}); make room, then "
              f"{AGAIN.get(name, 'run it again')}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
