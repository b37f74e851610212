"""Two CPU processes under torchrun (gloo): same command, DDP-averaged gradients, one saver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train_support import small_catalog, tiny_config, write_small_corpus, write_tiny_base

SCRIPT = """
import json, os, sys
from radproto.training.config import from_mapping
from radproto.training.finetune import train
from test_train_support import small_catalog
config = from_mapping(json.loads(open(sys.argv[1]).read()))
skew_step = int(os.environ.get("SKEW_STEP", "0"))
def on_step(step, trainer):  # rank 1's clock jumps ahead (a slow rank, a stalled host)
    if trainer.dist.rank == 1 and step == skew_step:
        trainer.train_seconds += float(os.environ["SKEW_SECONDS"])
result = train(config, small_catalog(), progress=False, on_step=on_step)
print("RESULT", json.dumps({"steps": result.steps, "saved": result.model_dir is not None,
                           "stopped": result.stopped, "throughput": result.throughput}))
"""


def _kill_processes_running(needle: str) -> None:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if needle in cmdline.read_bytes().decode(errors="replace"):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def _run_two_ranks(tmp_path: Path, config, *, timeout: float = 240,
                   extra_env: dict[str, str] | None = None) -> list[dict]:
    """`train` in two gloo processes under torchrun; each rank's RESULT line."""
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config.to_dict()))
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(extra_env or {})}
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as stdout_file, err.open("w") as stderr_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
             "--standalone", str(script), str(config_file)],
            stdout=stdout_file, stderr=stderr_file, text=True, env=env, cwd=tmp_path,
            start_new_session=True)  # its own process group: a hang kills every worker
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _kill_processes_running(str(script))  # workers that left the group
            proc.wait()
            raise
    stdout, stderr = out.read_text(), err.read_text()
    assert proc.returncode == 0, stderr[-3000:]
    return [json.loads(line.split("RESULT ", 1)[1]) for line in stdout.splitlines()
            if "RESULT " in line]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
@pytest.mark.parametrize("packing", ["off", "on"])
def test_two_process_ddp_run_trains_and_rank0_saves(tmp_path: Path, packing: str) -> None:
    catalog = small_catalog()
    corpus = write_small_corpus(tmp_path / "corpus", catalog)
    config = tiny_config(write_tiny_base(tmp_path / "base"), corpus, tmp_path / "model",
                         max_steps=3, batch_size=4, grad_accum=2, eval_interval=3,
                         packing=packing)
    results = _run_two_ranks(tmp_path, config)
    assert sorted(r["saved"] for r in results) == [False, True]  # rank 0 only
    assert all(r["steps"] == 3 for r in results)
    assert all(r["throughput"]["packing"] == (packing == "on") for r in results)
    assert all(r["throughput"]["world_size"] == 2 for r in results)
    assert (tmp_path / "model" / "radproto_model.json").is_file()
    state = torch.load(tmp_path / "model" / "checkpoint" / "state.pt", weights_only=False)
    # 2 ranks x 2 micro-batches per step: 3 steps consumed 12 micro-batches of the epoch.
    assert state["step"] == 3 and state["position"] == 12


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_ranks_whose_clocks_disagree_stop_together(tmp_path: Path) -> None:
    """A time budget is decided on one clock: a rank that thinks time is up and one that
    does not would stop at different steps (one waits forever in a collective)."""
    catalog = small_catalog()
    corpus = write_small_corpus(tmp_path / "corpus", catalog)
    config = tiny_config(write_tiny_base(tmp_path / "base"), corpus, tmp_path / "model",
                         max_steps=6, batch_size=4, eval_interval=3, time_budget_minutes=10)
    results = _run_two_ranks(tmp_path, config, timeout=150,
                             extra_env={"SKEW_STEP": "1", "SKEW_SECONDS": "590"})
    assert [(r["steps"], r["stopped"]) for r in results] == [(2, "time_budget")] * 2
