"""The library modules pass ``mypy --strict`` (settings in pyproject.toml's ``[tool.mypy]``; docs/library.md).

Runs only where mypy is importable; the experiments harness (``gns_utils.experiments``) is not checked.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ["gns_utils/__init__.py", "gns_utils/noise", "gns_utils/critical_batch.py", "gns_utils/theory.py",
           "gns_utils/batch_size.py", "gns_utils/cli.py", "gns_utils/_lazy.py", "gns_utils/huggingface.py",
           "gns_utils/lightning.py"]


def test_library_passes_mypy_strict(tmp_path):
    pytest.importorskip("mypy")
    command = [sys.executable, "-m", "mypy", "--strict", "--python-executable", sys.executable,
               "--cache-dir", str(tmp_path / "mypy_cache"),
               "--follow-imports=silent", *LIBRARY]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"mypy --strict failed:\n{result.stdout}{result.stderr}"
