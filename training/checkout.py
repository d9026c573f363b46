"""The source checkout the training commands run from, where their defaults point (models/, docs/gallery/).

A package installed from a wheel has no checkout: its folder is site-packages/dermagan, which holds no shipped
models and must not be written into. There `checkout_path` is None, and an option defaulting to it is required.
"""

from __future__ import annotations

from pathlib import Path

#: <repo> in a source checkout or an editable install (training/ is <repo>/training), site-packages/dermagan in a
#: wheel install
ROOT = Path(__file__).resolve().parents[1]


def checkout_path(*parts: str) -> Path | None:
    """ROOT / parts where this package runs from a source checkout (pyproject.toml beside training/); None for an
    installed package."""
    return ROOT.joinpath(*parts) if (ROOT / "pyproject.toml").is_file() else None


def default_or_required(*parts: str) -> dict:
    """add_argument keywords for an option whose default is the checkout's ROOT / parts: that default, or, for an
    installed package, required (argparse then names the option: "the following arguments are required")."""
    path = checkout_path(*parts)
    return {"default": path} if path is not None else {"required": True}


#: the help text's note on such an option
INSTALLED_NOTE = "required where dermagan is installed from a wheel, without a source checkout"
