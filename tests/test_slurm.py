"""The sbatch scripts: valid bash, and their training command runs under a (faked) single-task SLURM job."""

import os
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import tiny_config

SLURM = Path(__file__).parents[1] / "slurm"
SCRIPTS = sorted(SLURM.glob("*.sbatch")) + sorted(SLURM.glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_valid_bash_with_the_lightning_slurm_contract(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    if script.suffix == ".sbatch" and "mmrec_lightning fit" in text:  # training: requeued on preemption
        assert "#SBATCH --signal=SIGUSR1@90" in text and "#SBATCH --ntasks-per-node=" in text
        assert "srun python -m mmrec_lightning fit" in text and "--trainer.num_nodes" in text
    elif script.suffix == ".sbatch":  # the sweep: workers of an array job on one storage, task 0 finishing
        assert "srun python -m mmrec_lightning sweep" in text and "--search_only" in text and "--array" in text


@pytest.mark.slow
def test_single_node_script_trains_under_a_faked_slurm_job(tmp_path, synthetic_dir, tokenizer_dir):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    srun = fake_bin / "srun"
    srun.write_text('#!/bin/bash\nexec "$@"\n')  # one task: srun just runs the command
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    python = Path(os.sys.executable).parent
    config = tiny_config(tmp_path, synthetic_dir, tokenizer_dir, max_epochs=1)
    env = {
        **os.environ,
        "PATH": f"{fake_bin}:{python}:{os.environ['PATH']}",
        "CONFIG": str(config),
        "ACCELERATOR": "cpu",
        "PRECISION": "32-true",
        "STRATEGY": "auto",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "mmrec",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "1",
        "SLURM_NODELIST": "localhost",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
    }
    result = subprocess.run(
        ["bash", str(SLURM / "single_node.sbatch")], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "runs").rglob("last.ckpt"))
