"""The on-disk results store: one folder per run, written so nothing is ever half-read.

Layout (documented field by field in ``results/README.md``)::

    <results_dir>/<task>/runs/<run_id>/config.json    written first
    <results_dir>/<task>/runs/<run_id>/metrics.csv    appended at every evaluation
    <results_dir>/<task>/runs/<run_id>/summary.json   written last, atomically, with `status`
    <results_dir>/<task>/summary.json                 the task's B_crit / B_simple summary

``run_id`` is a hash of the run's configuration, so re-running a sweep finds the
runs it has already finished. A folder without a valid ``summary.json`` is an
interrupted run: :func:`load_run_summary` returns ``None`` for it and the sweep
redoes it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from gns_utils.experiments.paths import repo_root

#: Every status a finished run can have.
STATUSES = ("complete", "diverged", "budget_exhausted", "pruned", "failed")
#: Statuses that are final: a resumed sweep skips these runs (``failed`` is retried).
FINAL_STATUSES = ("complete", "diverged", "budget_exhausted", "pruned")


def _jsonable(obj: Any) -> Any:
    """Convert numpy / torch scalars, tuples and non-finite floats into strict JSON values."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return _jsonable(obj.item())
    return obj


def _write_atomic(path: str | os.PathLike, write: Any) -> Path:
    """Call ``write(file)`` on a temporary file in ``path``'s folder, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, data: Mapping[str, Any]) -> Path:
    """Write JSON to ``path`` atomically: a temporary file in the same folder, then rename.

    Non-finite floats become ``null`` (strict JSON). A reader never sees a partial file.
    """
    def write(f: Any) -> None:
        json.dump(_jsonable(data), f, indent=2, sort_keys=False, allow_nan=False)
        f.write("\n")

    return _write_atomic(path, write)


def write_json_if_changed(path: str | os.PathLike, data: Mapping[str, Any],
                          ignore: tuple[str, ...] = ("provenance",)) -> Path:
    """:func:`write_json_atomic`, unless the file already holds the same content apart from the ``ignore``
    keys (when and where it was made): re-deriving a result from the same runs leaves the file, and a
    git checkout, untouched."""
    old = read_json(path)
    if old is not None:
        new = json.loads(json.dumps(_jsonable(data), allow_nan=False))
        if {k: v for k, v in old.items() if k not in ignore} == {k: v for k, v in new.items() if k not in ignore}:
            return Path(path)
    return write_json_atomic(path, data)


def write_csv_atomic(path: str | os.PathLike, frame: pd.DataFrame) -> Path:
    """Write a table to ``path`` as CSV atomically (as :func:`write_json_atomic`)."""
    return _write_atomic(path, lambda f: frame.to_csv(f, index=False))


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """Read a JSON object; ``None`` when the file is missing, empty or not valid JSON."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def config_hash(config: Mapping[str, Any], length: int = 12) -> str:
    """A stable short hash of a configuration (sorted-key JSON, SHA-256)."""
    text = json.dumps(_jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def git_state() -> dict[str, Any]:
    """The repository's commit and whether tracked files outside ``results/`` have uncommitted changes.

    ``results/`` (the committed outputs) is left out of the dirty check: a rerun of
    ``make reproduce`` rewrites it while it runs, and it holds no code.
    """
    root = repo_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
                               cwd=root, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return {"git_commit": None, "git_dirty": None}
        return {"git_commit": commit.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


def provenance(device: str | None = None, seed: int | None = None) -> dict[str, Any]:
    """Everything needed to say where a number came from: code, libraries, machine."""
    import torch  # local: keep this module importable without torch for file readers

    info: dict[str, Any] = {
        **git_state(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "hostname": platform.node(),
        "device": device,
        "seed": seed,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[:1],
    }
    if device and device.startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(0)
    return info


class MetricsWriter:
    """Append rows to ``metrics.csv`` as a run trains, flushing each row.

    The header is fixed by the first row; later rows must have the same keys.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._columns: list[str] | None = None
        self._file = open(self.path, "w")

    def write(self, row: Mapping[str, Any]) -> None:
        if self._columns is None:
            self._columns = list(row)
            self._file.write(",".join(self._columns) + "\n")
        elif list(row) != self._columns:
            raise ValueError(f"metrics row keys {list(row)} differ from header {self._columns}")
        self._file.write(",".join(_csv_value(row[c]) for c in self._columns) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if not math.isfinite(float(value)) else repr(float(value))
    return str(value)


def task_dir(results_dir: str | os.PathLike, task: str) -> Path:
    """``<results_dir>/<task>``."""
    return Path(results_dir) / task


def run_dir(results_dir: str | os.PathLike, task: str, run_id: str) -> Path:
    """``<results_dir>/<task>/runs/<run_id>``."""
    return task_dir(results_dir, task) / "runs" / run_id


def load_run_summary(path: str | os.PathLike, expected_run_id: str | None = None) -> dict[str, Any] | None:
    """The summary of a finished run, or ``None`` if the run folder is incomplete.

    A summary counts only if it parses, carries a known ``status`` and (when given)
    the expected ``run_id``; anything else means the run was interrupted or corrupted.
    """
    summary = read_json(Path(path) / "summary.json")
    if summary is None or summary.get("status") not in STATUSES:
        return None
    if expected_run_id is not None and summary.get("run_id") != expected_run_id:
        return None
    return summary


def load_run_summaries(results_dir: str | os.PathLike, task: str) -> list[dict[str, Any]]:
    """The summaries of every finished run of a task, in folder order (interrupted runs left out)."""
    folders = sorted((task_dir(results_dir, task) / "runs").glob("*"))
    return [s for s in (load_run_summary(f) for f in folders) if s is not None]


def load_metrics(results_dir: str | os.PathLike, task: str, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """All ``metrics.csv`` rows of a task's finished runs, tidy (see :func:`read_metrics`)."""
    wanted = set(run_ids) if run_ids is not None else None
    runs = [{"run_id": s["run_id"], "batch_examples": s["config"]["batch_size"], "batch_units": s["batch_units"],
             "lr": s["config"]["lr"], "status": s["status"]}
            for s in load_run_summaries(results_dir, task) if wanted is None or s["run_id"] in wanted]
    return read_metrics(results_dir, task, pd.DataFrame(runs, columns=list(RUN_COLUMNS)))


#: What :func:`read_metrics` adds to each ``metrics.csv`` row, from the run's summary.
RUN_COLUMNS = ("run_id", "batch_examples", "batch_units", "lr", "status")


def read_metrics(results_dir: str | os.PathLike, task: str, runs: pd.DataFrame) -> pd.DataFrame:
    """The ``metrics.csv`` rows of the given finished runs, tidy.

    Args:
        results_dir, task: where the runs are.
        runs: one row per run with :data:`RUN_COLUMNS`: ``run_id``, ``batch_examples`` (examples, or
            sequences, per step: the config's ``batch_size``), ``batch_units`` (B in the task's units:
            images, tokens or frames, as the run recorded it), ``lr``, ``status`` (e.g. a sweep's run
            table, so no summary is read twice).

    Returns:
        The rows with those columns first; runs without a (non-empty) ``metrics.csv`` are skipped.
    """
    frames = []
    for run in runs[list(RUN_COLUMNS)].drop_duplicates("run_id").itertuples(index=False):
        metrics = run_dir(results_dir, task, run.run_id) / "metrics.csv"
        if not metrics.exists() or metrics.stat().st_size == 0:
            continue
        frame = pd.read_csv(metrics)
        for k, column in enumerate(RUN_COLUMNS):
            frame.insert(k, column, getattr(run, column))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
