"""The data-parallel noise source under DDP, launched with torchrun (2 CPU processes, gloo)."""

import json
import os
import subprocess
import sys

import pytest

from gns_utils.experiments.paths import repo_path


@pytest.fixture(scope="module")
def torchrun_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(repo_path("tests", "ddp_worker.py")), str(out)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("case", ["plain", "accumulation", "unequal"])
def test_ddp_estimate_equals_the_single_process_estimate_on_the_same_batches(torchrun_results, case):
    rank0, rank1 = torchrun_results
    assert rank0[case]["ddp"] == pytest.approx(rank1[case]["ddp"], rel=1e-12)  # every rank gets the same numbers
    g2, trace, b_small, b_big = rank0[case]["ddp"]
    ref = rank0[case]["reference"]
    assert (b_small, b_big) == pytest.approx(ref[2:], rel=1e-12)
    assert g2 == pytest.approx(ref[0], rel=1e-9) and trace == pytest.approx(ref[1], rel=1e-9)
    assert trace > 0
    if case == "unequal":
        assert (b_small, b_big) == pytest.approx((2 / (1 / 6 + 1 / 10), 4 / (1 / 6 + 1 / 10)))


def test_every_measures_only_every_mth_step_and_leaves_ddp_averaging_intact(torchrun_results):
    rank0, rank1 = torchrun_results
    first, skipped, third = rank0["every"]
    assert skipped is None and first is not None and third is not None
    assert first == pytest.approx(rank0["plain"]["ddp"], rel=1e-12)  # the same weights and batches as "plain"
    assert third == pytest.approx(first, rel=1e-12)  # no optimizer step between: the same gradients
    assert rank0["every_grad"] == pytest.approx(rank1["every_grad"], rel=1e-12)  # the unmeasured step averaged too
