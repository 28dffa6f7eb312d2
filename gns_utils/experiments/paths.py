"""Where things are: the repository, the data root, and the error for a data set that is not there.

Paths resolve here, in one place (never ``../..``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # gns_utils/


def repo_root() -> Path:
    """The repository root: the folder holding ``pyproject.toml`` above the ``gns_utils`` package.

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


#: The command that prepares every offline data set.
PREPARE_COMMAND = "make data  (= python -m gns_utils.experiments.prepare)"


class DatasetNotFoundError(FileNotFoundError):
    """A data set is not on this machine; the message says where we looked and how to get it.

    Attributes:
        dataset: the data set's name.
        searched: the paths that were looked at.
        command: the command that gets the data set.
    """

    def __init__(self, dataset: str, searched: Sequence[os.PathLike | str], command: str,
                 detail: str = "") -> None:
        self.dataset = dataset
        self.searched = [str(p) for p in searched]
        self.command = command
        lines = [f"Dataset {dataset!r} not found.", "Searched:"]
        lines += [f"  {p}" for p in self.searched]
        if detail:
            lines.append(detail)
        lines.append(f"To get it: {command}")
        super().__init__("\n".join(lines))

    def __str__(self) -> str:  # OSError's str would prefix an errno otherwise
        return self.args[0]


class DatasetIntegrityError(RuntimeError):
    """A data set's files are present but fail torchvision's md5 check."""
