"""Print the requirements of `dermagan[EXTRA,...]` from pyproject.toml, one per line.

The Dockerfile installs these first, in a layer of their own, so that a change to dermagan's code
rebuilds only the small layer that installs dermagan itself (`pip install --no-deps .`), not the
hundreds of megabytes of onnxruntime, CUDA and cuDNN wheels. Self-references such as
`dermagan[api]` are followed. Standard library only (it runs before anything is installed).

    python3 deploy/requirements.py pyproject.toml serve-gpu > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

SELF_REFERENCE = re.compile(r"dermagan\[([\w,\s-]+)\]")


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    todo, seen, out = list(extras), set(), list(project.get("dependencies", []))
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"unknown extra {extra!r}; pyproject.toml has {sorted(optional)}")
        seen.add(extra)
        for req in optional[extra]:
            ref = SELF_REFERENCE.fullmatch(req.strip())
            if ref:
                todo += [x.strip() for x in ref.group(1).split(",")]
            elif req not in out:
                out.append(req)
    return out


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    print("\n".join(requirements(Path(sys.argv[1]), sys.argv[2:])))
