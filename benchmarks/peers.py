"""What the speed benchmarks measure against, and where: the machine, and MMRec's own code run beside ours.

``machine()`` describes the machine a benchmark runs on: CPU model, the instruction sets that decide the speed
of its products (AVX2, AVX-512, AVX512-BF16, AMX), cores, torch threads and library versions. Every speed
benchmark prints it with its table and writes it to its JSON: a time means nothing without the machine.

``MMRecPeer`` runs MMRec's own code (https://github.com/enoche/MMRec) from the user's checkout of it
(``--mmrec DIR``, the folder holding ``src/main.py``), one job at a time, in a subprocess of the same Python
with the same number of threads (``torch.set_num_threads``, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``). Nothing
of MMRec is copied into this repository. The child builds what MMRec's ``utils.quick_start`` builds — its
``Config`` (``src/configs/overall.yaml``, the dataset's and the model's yaml, then our overrides),
``RecDataset``, ``TrainDataLoader`` / ``EvalDataLoader``, the model and ``common.trainer.Trainer`` — and:

- ``train``: runs ``Trainer.fit`` for the given epochs with validation off, timing each epoch as MMRec's own
  log does: ``fit`` passes the start and end of every epoch (``pre_epoch_processing``, ``_train_epoch`` with
  its data loading and negative sampling, the scheduler step) to ``_generate_train_loss_output``, which the
  child wraps to keep them at full precision instead of the logged two decimals;
- ``evaluate``: loads given user and item vectors into MMRec's BPR and times ``Trainer.evaluate`` on the test
  split (its batches, ``full_sort_predict``, the mask, ``topk`` and ``TopKEvaluator``), returning its metrics.

The data are written once in MMRec's format (``<dataset>.inter`` with ``userID``, ``itemID``, ``x_label``;
``image_feat.npy``, ``text_feat.npy``) from a prepared dataset, under a folder of ours (``--peer-workdir``).

MMRec was written for numpy 1, scipy < 1.12 and torch 1.x. The child makes it run on this environment at run
time, without touching the checkout:

- scipy's ``dok_matrix`` lost the private ``_update`` that LightGCN and FREEDOM build their adjacency with: it
  is restored as an update of the matrix's ``_dict`` (what it was);
- ``lmdb`` (imported by ``utils/dataset.py``, used only for raw images) is stubbed when it is not installed;
- ``torch.load`` of FREEDOM's cached item graph (a sparse tensor it saved itself) is called with
  ``weights_only=False``, the default before torch 2.6;
- MMRec's ``init_logger`` (which writes ``./log/`` into the checkout) is not called; its log goes to stderr.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

FLAGS_THAT_MATTER = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "bf16")
"""CPU flags that decide how fast float32 and bfloat16 products run (x86: AVX2, AVX-512, AVX512-BF16, AMX;
ARM: BF16)."""


def machine() -> dict[str, Any]:
    """The machine a benchmark runs on: CPU model and the flags that matter, cores, torch threads, versions."""
    import numpy
    import torch

    from mmrec_lightning.features.encoder import cpu_bfloat16_is_fast, cpu_flags

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    return {
        "cpu": model,
        "flags": None if flags is None else [flag for flag in FLAGS_THAT_MATTER if flag in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bfloat16_fast": cpu_bfloat16_is_fast(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "load_average_1min": os.getloadavg()[0],
    }


def describe(info: dict[str, Any]) -> str:
    """One line for a table's heading."""
    flags = (
        "flags unknown"
        if info["flags"] is None
        else ", ".join(info["flags"]) or "none of " + "/".join(FLAGS_THAT_MATTER)
    )
    return (
        f"machine: {info['cpu']} ({flags}; torch {info['torch']} dispatch {info['torch_cpu_capability']}); "
        f"{info['cores']} cores, {info['threads']} torch threads; bfloat16 products "
        f"{'native' if info['bfloat16_fast'] else 'emulated (no bf16 instructions)'}"
    )


def write_mmrec_data(prepared: str | Path, folder: Path, features: dict[str, Path] | None = None, name: str = "baby"):
    """A prepared dataset in MMRec's format under ``folder / name``: ``<name>.inter`` (``userID``, ``itemID``,
    ``x_label`` 0/1/2 for train/valid/test, tab-separated) and, given ``features`` (``{"image": path, "text":
    path}``), ``image_feat.npy`` and ``text_feat.npy``. Returns ``folder`` (MMRec's ``data_path``)."""
    import numpy as np

    from mmrec_lightning.data.schema import SPLITS, PreparedDataset

    dataset = PreparedDataset(prepared)
    target = folder / name
    target.mkdir(parents=True, exist_ok=True)
    with open(target / f"{name}.inter", "w") as out:
        out.write("userID\titemID\tx_label\n")
        for label, split_name in enumerate(SPLITS):
            split = dataset.split(split_name)
            users = np.repeat(np.arange(dataset.num_users), split.lengths())
            for user, item in zip(users.tolist(), split.items.tolist(), strict=True):
                out.write(f"{user}\t{item}\t{label}\n")
    for modality, path in (features or {}).items():
        file = target / ("image_feat.npy" if modality == "image" else "text_feat.npy")
        np.save(file, np.load(path, mmap_mode="r").astype(np.float32))
    return folder


class PeerError(RuntimeError):
    """MMRec's code failed in the child; the message ends with its output."""


class MMRecPeer:
    """MMRec's own code from a checkout at ``checkout`` (the folder holding ``src/main.py``), run in subprocesses
    of ``python`` with ``threads`` threads, on data in MMRec's format under ``data_path``."""

    def __init__(self, checkout: str | Path, data_path: Path, threads: int, python: str = sys.executable) -> None:
        self.checkout = Path(checkout).resolve()
        missing = [f for f in ("src/main.py", "src/common/trainer.py", "src/configs/overall.yaml")
                   if not (self.checkout / f).is_file()]  # fmt: skip
        if missing:
            raise SystemExit(
                f"--mmrec {checkout}: not a checkout of MMRec (missing {', '.join(missing)}); clone "
                "https://github.com/enoche/MMRec and pass its folder"
            )
        self.data_path, self.threads, self.python = data_path, threads, python

    def describe(self) -> dict[str, Any]:
        """Where the peer's code comes from: the checkout and, if it is a git repository, its commit."""
        commit = subprocess.run(
            ["git", "-C", str(self.checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        )
        return {"checkout": str(self.checkout), "commit": commit.stdout.strip() or None}

    def train(self, model: str, epochs: int, config: dict[str, Any], dataset: str = "baby") -> dict[str, Any]:
        """Seconds (wall, and CPU of the child) of each of ``epochs`` training epochs of MMRec's ``model``."""
        return self._run({"task": "train", "model": model, "dataset": dataset, "epochs": epochs, "config": config})

    def evaluate(self, vectors: Path, repeats: int, config: dict[str, Any], dataset: str = "baby") -> dict[str, Any]:
        """Seconds of each of ``repeats`` test evaluations by MMRec's trainer of its BPR holding the user and item
        vectors in ``vectors`` (``.npz`` with ``users``, ``items``), and the metrics of the last."""
        job = {"task": "evaluate", "model": "BPR", "dataset": dataset, "repeats": repeats, "config": config}
        return self._run({**job, "vectors": str(vectors)})

    def _run(self, job: dict[str, Any]) -> dict[str, Any]:
        job = {
            **job,
            "checkout": str(self.checkout),
            "data_path": str(self.data_path) + os.sep,
            "threads": self.threads,
        }
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "result.json"
            job["result"] = str(result)
            done = subprocess.run(
                [self.python, str(Path(__file__).resolve()), json.dumps(job)],
                cwd=self.checkout, env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if done.returncode != 0 or not result.is_file():
                tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
                raise PeerError(f"MMRec's {job['model']} ({job['task']}) failed in {self.checkout}:\n{tail}")
            return json.loads(result.read_text())


# --- the child: MMRec's code, in its own process ---------------------------------------------------------------


def _patch_for_this_environment() -> None:
    """MMRec on numpy 2, scipy >= 1.12 and torch >= 2.6, without touching its files (see the module's doc)."""
    import functools
    import types

    import scipy.sparse as sp
    import torch

    if not hasattr(sp.dok_matrix, "_update"):
        sp.dok_matrix._update = lambda self, data: self._dict.update(data)
    try:
        import lmdb  # noqa: F401
    except ImportError:
        sys.modules["lmdb"] = types.ModuleType("lmdb")
    torch.load = functools.partial(torch.load, weights_only=False)


def _child(job: dict[str, Any]) -> None:
    import logging
    import time

    import torch

    torch.set_num_threads(job["threads"])
    os.chdir(job["checkout"])  # MMRec reads src/configs relative to the working directory
    sys.path.insert(0, str(Path(job["checkout"]) / "src"))
    _patch_for_this_environment()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from utils.configurator import Config
    from utils.dataloader import EvalDataLoader, TrainDataLoader
    from utils.dataset import RecDataset
    from utils.utils import get_model, get_trainer, init_seed

    # as utils.quick_start: the config, the data, the loaders, the model, the trainer (one hyper-parameter point)
    overrides = {"use_gpu": False, "data_path": job["data_path"], **job["config"]}
    config = Config(job["model"], job["dataset"], overrides)
    for name in config["hyper_parameters"]:  # quick_start iterates over lists; each is one value here
        if isinstance(config[name], list):
            config[name] = config[name][0]
    init_seed(config["seed"])
    dataset = RecDataset(config)
    train_set, valid_set, test_set = dataset.split()
    for part in (dataset, train_set, valid_set, test_set):
        str(part)  # quick_start logs each; that sets the counts its loaders read
    train_data = TrainDataLoader(config, train_set, batch_size=config["train_batch_size"], shuffle=True)
    train_data.pretrain_setup()
    model = get_model(config["model"])(config, train_data).to(config["device"])
    trainer = get_trainer()(config, model, False)

    if job["task"] == "train":
        seconds, cpu_seconds, cpu_start = [], [], [0.0]
        log_epoch, pre_epoch = trainer._generate_train_loss_output, model.pre_epoch_processing

        def started(*args, **kwargs):
            cpu_start[0] = time.process_time()
            return pre_epoch(*args, **kwargs)

        def ended(epoch_idx, s_time, e_time, losses):  # the times fit measured for its own log
            seconds.append(e_time - s_time)
            cpu_seconds.append(time.process_time() - cpu_start[0])
            return log_epoch(epoch_idx, s_time, e_time, losses)

        model.pre_epoch_processing, trainer._generate_train_loss_output = started, ended
        trainer.eval_step = job["epochs"] + 1  # validation off, as in our timed runs
        trainer.fit(train_data, valid_data=None, test_data=None, saved=False, verbose=False)
        result = {"epochs_s": seconds, "epochs_cpu_s": cpu_seconds}
    else:
        import numpy as np

        vectors = np.load(job["vectors"])
        with torch.no_grad():
            model.user_embedding.weight.copy_(torch.from_numpy(vectors["users"]))
            model.item_embedding.weight.copy_(torch.from_numpy(vectors["items"]))
        test_data = EvalDataLoader(config, test_set, additional_dataset=train_set, batch_size=config["eval_batch_size"])
        seconds, metrics = [], None
        for _ in range(job["repeats"]):
            start = time.perf_counter()
            metrics = trainer.evaluate(test_data)
            seconds.append(time.perf_counter() - start)
        result = {
            "seconds": seconds,
            "metrics": {k: float(v) for k, v in metrics.items()},
            "users": len(test_data.eval_u),
        }
    result["threads"] = torch.get_num_threads()
    Path(job["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
