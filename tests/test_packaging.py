"""The installed distribution must contain every package in service/ and training/."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_dir_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    mapping = cfg["package-dir"]
    found = set()
    for pkg, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((pkg, *rel)))
    assert found - listed == set(), f"add these to [tool.setuptools] packages: {sorted(found - listed)}"


def test_service_never_imports_torch_or_training():
    offenders = []
    for py in (ROOT / "service").rglob("*.py"):
        for line in py.read_text().splitlines():
            s = line.strip()
            if s.startswith(("import ", "from ")) and any(
                w in s.split() or s.split()[1].startswith(w + ".") for w in ("torch", "dermagan.training")
            ):
                offenders.append(f"{py.relative_to(ROOT)}: {s}")
    assert not offenders, offenders
