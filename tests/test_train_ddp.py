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
import json, sys
from radproto.training.config import from_mapping
from radproto.training.finetune import train
from test_train_support import small_catalog
config = from_mapping(json.loads(open(sys.argv[1]).read()))
result = train(config, small_catalog(), progress=False)
print("RESULT", json.dumps({"steps": result.steps, "saved": result.model_dir is not None,
                           "throughput": result.throughput}))
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
@pytest.mark.parametrize("packing", ["off", "on"])
def test_two_process_ddp_run_trains_and_rank0_saves(tmp_path: Path, packing: str) -> None:
    catalog = small_catalog()
    corpus = write_small_corpus(tmp_path / "corpus", catalog)
    config = tiny_config(write_tiny_base(tmp_path / "base"), corpus, tmp_path / "model",
                         max_steps=3, batch_size=4, grad_accum=2, eval_interval=3,
                         packing=packing)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config.to_dict()))
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--standalone", str(script), str(config_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
        start_new_session=True)  # its own process group: a hang kills every worker
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    results = [json.loads(line.split("RESULT ", 1)[1]) for line in stdout.splitlines()
               if "RESULT " in line]
    assert sorted(r["saved"] for r in results) == [False, True]  # rank 0 only
    assert all(r["steps"] == 3 for r in results)
    assert all(r["throughput"]["packing"] == (packing == "on") for r in results)
    assert all(r["throughput"]["world_size"] == 2 for r in results)
    assert (tmp_path / "model" / "radproto_model.json").is_file()
    state = torch.load(tmp_path / "model" / "checkpoint" / "state.pt", weights_only=False)
    # 2 ranks x 2 micro-batches per step: 3 steps consumed 12 micro-batches of the epoch.
    assert state["step"] == 3 and state["position"] == 12
