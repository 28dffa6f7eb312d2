"""``gns-utils fit``: the (2.11) fit of a user's own sweep from a CSV file."""

import importlib.metadata
import io
import json
import re
import subprocess
import sys

import pandas as pd
import pytest

from gns_utils.cli import main


def _sweep(path, goals={"0.5": (400.0, 300.0), "0.3": (900.0, 600.0)}, sizes=(16, 32, 64, 128, 256, 512, 1024)):
    """Exact (2.11) steps per goal, plus a slower learning rate at every batch size (it must not count)."""
    rows = []
    for goal, (s_min, b_crit) in goals.items():
        for b in sizes:
            steps = s_min * (1 + b_crit / b)
            rows += [{"batch_size": b, "goal": goal, "lr": 0.1, "steps": steps},
                     {"batch_size": b, "goal": goal, "lr": 0.2, "steps": 1.7 * steps}]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_fit_recovers_b_crit_per_goal_from_the_fewest_steps(tmp_path, capsys):
    assert main(["fit", str(_sweep(tmp_path / "sweep.csv"))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "B_crit ± s.e." in lines[0] and "bounded by the data" in lines[0]
    first, second = lines[1].split(), lines[2].split()
    assert first[0] == "0.5" and first[1] == "7" and first[2] == "300" and first[-1] == "yes"
    assert second[0] == "0.3" and second[2] == "600" and second[5] == "900"  # B_crit, then S_min


def test_a_goal_with_b_crit_beyond_the_batch_sizes_is_reported_as_a_bound(tmp_path, capsys):
    path = _sweep(tmp_path / "sweep.csv", goals={"1": (100.0, 1e6)}, sizes=(8, 16, 32, 64))
    main(["fit", str(path)])
    assert "no: B_crit >= the largest batch size" in capsys.readouterr().out


def test_fit_saves_the_pareto_fronts(tmp_path, capsys):
    main(["fit", str(_sweep(tmp_path / "sweep.csv")), "--plot", str(tmp_path / "fronts")])
    assert (tmp_path / "fronts.png").stat().st_size > 0 and (tmp_path / "fronts.pdf").stat().st_size > 0


@pytest.mark.parametrize("content, message", [
    ("a,b\n1,2\n", "no column batch_size or steps"),
    ("batch_size,steps\n32,abc\n", "non-numbers"),
    ("batch_size,steps\n-4,10\n", "positive"),
    ("batch_size,steps\n", "a header but no rows"),
    ("batch_size,steps\n16,100\n32,100,7\n64,40\n", "row 3 of .* has 3 cells but the header has 2"),
    ("batch_size,steps\n16,100\n32,inf\n64,40\n", "inf; leave the cell empty"),
])
def test_bad_files_get_a_message_that_says_what_to_do_and_exit_status_2(tmp_path, capsys, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    assert main(["fit", str(path)]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert main(["fit", str(tmp_path / "missing.csv")]) == 2 and "no such file" in capsys.readouterr().err
    assert main(["fit", str(tmp_path)]) == 2 and "is a directory" in capsys.readouterr().err


def test_too_few_batch_sizes_for_a_goal_say_so_and_exit_1(tmp_path, capsys):
    pd.DataFrame({"batch_size": [32, 64], "steps": [100.0, 60.0]}).to_csv(tmp_path / "two.csv", index=False)
    assert main(["fit", str(tmp_path / "two.csv")]) == 1
    captured = capsys.readouterr()
    assert "too few batch sizes" in captured.out and "no goal has a fitted B_crit" in captured.err


def test_json_and_csv_outputs_carry_every_goal_fit(tmp_path, capsys):
    path = str(_sweep(tmp_path / "sweep.csv"))
    assert main(["fit", path, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by_goal = {str(g["goal"]): g for g in data["goals"]}
    assert by_goal["0.5"]["b_crit"] == pytest.approx(300.0, rel=1e-6) and by_goal["0.3"]["s_min"] == pytest.approx(900.0)
    assert by_goal["0.5"]["bounded"] == "yes" and by_goal["0.5"]["batch_sizes"] == 7
    assert main(["fit", path, "--csv"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(table.columns) == ["goal", "batch_sizes", "b_crit", "b_crit_stderr", "s_min", "e_min", "bounded"]
    assert table["b_crit"].tolist() == pytest.approx([300.0, 600.0], rel=1e-6)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and importlib.metadata.version("gns_utils") in capsys.readouterr().out


def test_installed_as_a_console_script_with_help():
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("gns-utils") == "gns_utils.cli:main"
    out = subprocess.run([sys.executable, "-m", "gns_utils.cli", "fit", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "batch_size" in out and "steps" in out and "goal" in out


def test_steps_that_grow_with_batch_size_are_reported_as_no_fit(tmp_path, capsys):
    sizes = [16, 32, 64, 128, 256]
    pd.DataFrame({"batch_size": sizes, "steps": [100.0 * (b / 16) ** 0.4 for b in sizes]}).to_csv(
        tmp_path / "rising.csv", index=False)
    main(["fit", str(tmp_path / "rising.csv")])
    assert "steps grow with the batch size" in capsys.readouterr().out
