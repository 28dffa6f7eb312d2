"""Repository-relative paths, resolved in one place (never ``../..``)."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def repo_root() -> Path:
    """The repository root: the folder holding ``pyproject.toml`` above this package.

    Falls back to the current working directory when the package is installed
    outside a checkout (e.g. a wheel in site-packages).
    """
    candidate = _PACKAGE_DIR.parent
    if (candidate / "pyproject.toml").exists():
        return candidate
    return Path.cwd()


def repo_path(*parts: str | os.PathLike) -> Path:
    """A path inside the repository, e.g. ``repo_path("results", "summary.json")``."""
    return repo_root().joinpath(*parts)


def data_root() -> Path:
    """Where datasets are looked for and downloaded to.

    ``$GNS_DATA_ROOT`` when set, otherwise ``<repo>/data`` (git-ignored).
    """
    env = os.environ.get("GNS_DATA_ROOT")
    return Path(env).expanduser() if env else repo_path("data")
