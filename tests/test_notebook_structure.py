"""The notebooks are the source: each has the shape a reader steps through (no execution needed)."""

import ast
import json

import pytest

from gns_utils.experiments import figures
from gns_utils.experiments.paths import repo_path
from gns_utils.experiments.profiles import NOTEBOOK_DOMAINS

NOTEBOOKS = sorted(p.stem for p in repo_path("notebooks").glob("*.ipynb"))
GENERAL = {"profile", "results_dir", "tasks", "seed", "device", "progress"}


def _cells(name):
    return json.loads(repo_path("notebooks", f"{name}.ipynb").read_text())["cells"]


def _source(cell):
    return "".join(cell["source"])


def test_every_domain_notebook_and_the_summary_exist():
    assert set(NOTEBOOK_DOMAINS) | {"99_summary"} == set(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_header_then_one_tagged_parameters_cell_of_plain_literals(name):
    cells = _cells(name)
    assert cells[0]["cell_type"] == "markdown" and _source(cells[0]).startswith("# "), "a markdown header comes first"
    tagged = [k for k, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert tagged == [1], "exactly one parameters cell, right after the header"
    params = {}
    for line in _source(cells[1]).splitlines():
        assert "#" in line, f"parameter line without a type/units comment: {line!r}"
        node = ast.parse(line.split("#")[0]).body[0]
        assert isinstance(node, ast.Assign), line
        params[node.targets[0].id] = ast.literal_eval(node.value)  # plain literals only
    expected = GENERAL if name in NOTEBOOK_DOMAINS else {"profile", "results_dir", "tasks"}
    assert expected <= set(params), expected - set(params)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_no_definitions_and_no_outputs(name):
    for cell in _cells(name):
        if cell["cell_type"] != "code":
            continue
        assert not cell["outputs"] and cell["execution_count"] is None, "commit notebooks without outputs"
        tree = ast.parse(_source(cell))
        defined = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda))]
        assert not defined, f"notebooks call the library; they define nothing: {_source(cell)[:80]!r}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_a_markdown_cell_explains_every_figure(name):
    cells = _cells(name)
    figure_cells = [k for k, c in enumerate(cells) if c["cell_type"] == "code" and "figures." in _source(c)]
    assert figure_cells, "every notebook draws at least one figure"
    for k in figure_cells:
        text = _source(cells[k - 1])
        assert cells[k - 1]["cell_type"] == "markdown" and "**The paper**" in text and "What to look for" in text, \
            f"the cell before figure cell {k} must say what the paper shows and what to look for in the figure"
        calls = {n.func.attr for n in ast.walk(ast.parse(_source(cells[k])))
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                 and isinstance(n.func.value, ast.Name) and n.func.value.id == "figures"}
        assert calls and calls <= set(figures.__all__), calls
