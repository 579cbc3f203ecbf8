"""The HTTP server (``serve``) against the in-process floor: latency and throughput of ``/recommend`` at 100,000
items and of ``/items`` with an image, and the same work called directly in this process, in the same run.

    python benchmarks/serving.py [--items 100000 --users 10000 --requests 3000 --concurrency 8]

Builds, in a temporary folder: a checkpoint of the demo's model (configs/demo.yaml: EfficientNet-Lite0 and
all-MiniLM-L6-v2, frozen; trained one epoch on a tiny synthetic set: only its item tower is used, to encode
new items), a prepared dataset of ``--items`` items and ``--users`` users (20 interactions each: what
``exclude_seen`` leaves out), and an export of clustered random vectors of the model's dimension with the
indexes ``export`` builds (``--index auto``: at 100,000 items, IVF for inner product, HNSW for cosine).
Then starts the server on a free port of 127.0.0.1, sends a fixed number of requests from each
``--concurrency`` number of clients in turn (asyncio, one connection each), and stops it.

The floors: for ``/recommend``, the same FAISS search (the user's vector, the index, k + the user's seen
items) called directly, one query after another; for ``/items``, the item tower run on one image and text
and the cosine search, called directly. Targets on 2 CPU cores: ``/recommend`` p99 ≤ 25 ms and at least
half the floor's queries per second. Prints a table and writes ``benchmarks/results/serving.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from ann_agreement import clustered
from PIL import Image
from results_file import publish

from mmrec_lightning.data.schema import write_prepared
from mmrec_lightning.export.index import build_index, normalized, save_index, search
from mmrec_lightning.export.manifest import MANIFEST, item_output_file
from mmrec_lightning.serve.catalogue import ServedExport

REPO = Path(__file__).resolve().parent.parent
K = 10


def train_demo_model(folder: Path) -> tuple[str, int]:
    """A checkpoint of the demo's model, trained one epoch on a tiny synthetic set, and its dimension."""
    from mmrec_lightning.cli import RecommenderCLI
    from mmrec_lightning.data.prepare import main as prepare

    data = folder / "tiny"
    prepare(["--source", "synthetic", "--output", str(data), "--users", "100", "--items", "200", "--seed", "0"])
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 1,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(folder / "runs"),
            "callbacks": [
                {
                    "class_path": "mmrec_lightning.model_checkpoint.ModelCheckpoint",
                    "init_args": {"dirpath": str(folder / "checkpoints"), "save_last": True},
                }
            ],
        },
        "model": demo["model"],
        "data": {"path": str(data), "batch_size": 64},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    fit = RecommenderCLI(args=["fit", "--config", str(path)])
    return str(folder / "checkpoints" / "last.ckpt"), int(fit.model.hparams.embed_dim)


def write_export(folder: Path, checkpoint: str, dim: int, items: int, users: int, index: str) -> Path:
    """A prepared dataset of ``items`` text-only items and ``users`` users, and an export of random clustered
    vectors over it, laid out as ``export`` writes one."""
    rng = np.random.default_rng(0)
    dataset = folder / "dataset"
    per_user = 20
    user_of = np.repeat(np.arange(users), per_user)
    split = np.tile(np.array([0] * (per_user - 2) + [1, 2], dtype=np.int8), users)
    write_prepared(
        dataset,
        interactions=pa.table(
            {
                "user": user_of.astype(np.int32),
                "item": rng.integers(items, size=len(user_of)).astype(np.int32),
                "timestamp": np.tile(np.arange(per_user), users).astype(np.int64),
                "rating": pa.nulls(len(user_of), pa.float32()),
                "split": split,
            }
        ),
        items=[
            pa.table(
                {
                    "item": np.arange(items, dtype=np.int32),
                    "raw_id": [f"item{i}" for i in range(items)],
                    "text": [f"catalogue item {i}" for i in range(items)],
                    "category": np.zeros(items, dtype=np.int32),
                    "image": pa.nulls(items, pa.binary()),
                }
            )
        ],
        users=pa.table({"user": np.arange(users, dtype=np.int32), "raw_id": [f"user{u}" for u in range(users)]}),
        metadata={"source": "benchmarks/serving.py", "categories": ["catalogue"]},
    )
    export = folder / "export"
    export.mkdir()
    item_vectors, user_vectors = clustered(items, dim, 256, rng), clustered(users, dim, 256, rng)
    np.save(export / "item_vectors.npy", item_vectors)
    np.save(export / "user_vectors.npy", user_vectors)
    weights = rng.dirichlet(np.ones(3), size=items).astype(np.float32)
    np.save(export / item_output_file("modality_weights"), weights)
    pq.write_table(
        pa.table(
            {
                "item": np.arange(items),
                "raw_id": [f"item{i}" for i in range(items)],
                "text": [f"catalogue item {i}" for i in range(items)],
            }
        ),
        export / "items.parquet",
    )
    pq.write_table(
        pa.table({"user": np.arange(users), "raw_id": [f"user{u}" for u in range(users)]}), export / "users.parquet"
    )
    settings = {"kind": index, "exact_below": 100_000}
    save_index(build_index(item_vectors, "inner_product", **settings), export / "recommend.faiss")
    save_index(build_index(item_vectors, "cosine", **settings), export / "similar.faiss")
    manifest = {
        "model": "mmrec_lightning.models.multimodal.MultimodalRecommender",
        "checkpoint": checkpoint,
        "dataset": str(dataset),
        "dim": dim,
        "items": items,
        "users": users,
        "index": settings,
        "item_outputs": {"modality_weights": ["image", "text", "id"]},
    }
    (export / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return export


def product_image(seed: int) -> bytes:
    """A 256 x 256 JPEG, about the size of a product thumbnail."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((256, 256), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def summary(latencies: list[float], seconds: float) -> dict[str, float]:
    ms = 1000 * np.asarray(latencies)
    return {
        "requests": len(latencies),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "per_second": len(latencies) / seconds,
    }


def recommend_floor(export: Path, users: list[int]) -> dict[str, float]:
    """The FAISS search ``/recommend`` makes, called directly, one query at a time, on one thread as in a
    worker (``serve --threads 1``)."""
    faiss.omp_set_num_threads(1)
    served = ServedExport(export)
    seen = [len(served.seen(u)) for u in users]
    vectors = np.asarray(served.user_vectors[np.asarray(users)], dtype=np.float32)
    latencies = []
    start = time.perf_counter()
    for vector, n in zip(vectors, seen, strict=True):
        began = time.perf_counter()
        search(served.recommend_index, vector, K + n)
        latencies.append(time.perf_counter() - began)
    return summary(latencies, time.perf_counter() - start)


def items_floor(export: Path, image: bytes, count: int) -> dict[str, float]:
    """The work of ``/items`` called directly: decode the image, run the item tower, search by cosine."""
    from mmrec_lightning.serve.new_items import NewItemsAPI, read_image

    api = NewItemsAPI(str(export))
    api.setup("cpu")
    latencies = []
    start = time.perf_counter()
    for i in range(count):
        began = time.perf_counter()
        vectors = api.encode([read_image(image)], [f"new item {i}"])["vectors"]
        search(api.catalogue.similar_index, normalized(vectors), K)
        latencies.append(time.perf_counter() - began)
    return summary(latencies, time.perf_counter() - start)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(export: Path, port: int, extra: list[str]) -> subprocess.Popen:
    import httpx

    command = [sys.executable, "-m", "mmrec_lightning", "serve", "--export", str(export), "--port", str(port), *extra]
    server = subprocess.Popen(command, cwd=export.parent, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).text == "ok":
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(server)
    raise RuntimeError("the server did not become ready in 180 s")


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)  # the session start_server made: the server and its workers only
        server.wait()


async def load(url: str, requests: list[dict], concurrency: int) -> dict[str, float]:
    """Send every request once from ``concurrency`` clients; latency per request, requests per second."""
    import httpx

    latencies: list[float] = []
    queue = list(reversed(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def client_loop() -> None:
            while queue:
                request = queue.pop()
                began = time.perf_counter()
                response = await client.post(url, **request)
                latencies.append(time.perf_counter() - began)
                if response.status_code != 200:
                    raise RuntimeError(f"{url}: {response.status_code} {response.text}")

        start = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return summary(latencies, seconds)


def main() -> None:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--index", default="auto", choices=["auto", "exact", "approximate"])
    parser.add_argument("--requests", type=int, default=3000, help="/recommend requests sent")
    parser.add_argument("--item_requests", type=int, default=200, help="/items requests sent")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8], help="clients, one run each")
    parser.add_argument("--server_args", nargs="*", default=[], help="more `serve` options, e.g. --workers 2")
    parser.add_argument("--workdir", default=None, help="keep the model and export here, reused when present")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "serving.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory(prefix="serving-") as tmp:
        folder = Path(args.workdir or tmp)
        export = folder / "export"
        if not (export / MANIFEST).is_file():
            checkpoint, dim = train_demo_model(folder / "model")
            started = time.perf_counter()
            export = write_export(folder, checkpoint, dim, args.items, args.users, args.index)
            print(f"export of {args.items:,} items x {dim} built in {time.perf_counter() - started:.0f} s")
        dim = json.loads((export / MANIFEST).read_text())["dim"]
        users = rng.integers(args.users, size=args.requests).tolist()
        image = product_image(0)
        floors = {
            "/recommend": recommend_floor(export, users),
            "/items": items_floor(export, image, max(20, args.item_requests // 4)),
        }
        port = free_port()
        server = start_server(export, port, args.server_args)
        try:
            base = f"http://127.0.0.1:{port}"
            recommend = [{"json": {"user": f"user{u}", "k": K}} for u in users]
            new_items = [
                {"files": {"image": ("item.jpg", image, "image/jpeg")}, "data": {"text": f"new item {i}", "k": str(K)}}
                for i in range(args.item_requests)
            ]
            most = max(args.concurrency)
            asyncio.run(load(f"{base}/recommend", recommend[:200], most))  # warm up
            asyncio.run(load(f"{base}/items", new_items[:10], most))
            served = {
                f"/recommend x{c}": asyncio.run(load(f"{base}/recommend", recommend, c)) for c in args.concurrency
            }
            for c in sorted({min(args.concurrency), most}):
                served[f"/items x{c}"] = asyncio.run(load(f"{base}/items", new_items, c))
            info = httpx.get(f"{base}/info").json()
        finally:
            stop_server(server)
    floor_rate = floors["/recommend"]["per_second"]
    meets = {
        name: r["p99_ms"] <= 25 and r["per_second"] >= 0.5 * floor_rate
        for name, r in served.items()
        if name.startswith("/recommend")
    }
    indexes = f"recommend {info['index']['recommend']['type']}, similar {info['index']['similar']['type']}"
    lines = [
        f"\n{args.items:,} items x {dim}, {args.users:,} users ({indexes}); k = {K}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        f"{'endpoint':<12} {'path':<28} {'requests':>9} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}  target",
    ]
    rows = sorted(served.items(), key=lambda item: (item[0].split()[0] != "/recommend", int(item[0].split("x")[-1])))
    rows += [(f"{endpoint} floor", floors[endpoint]) for endpoint in ("/recommend", "/items")]
    for name, result in rows:
        endpoint, how = name.split()
        path = "in-process floor" if how == "floor" else f"HTTP, {how[1:]} concurrent clients"
        verdict = ("PASS" if meets[name] else "FAIL") if name in meets else ""
        lines.append(
            f"{endpoint:<12} {path:<28} {result['requests']:>9} {result['p50_ms']:>8.2f} "
            f"{result['p99_ms']:>8.2f} {result['per_second']:>8.1f}  {verdict}"
        )
    lines.append("target (/recommend): p99 ≤ 25 ms and ≥ 0.5x the floor's requests/s, at the same concurrency")
    result = {
        "items": args.items,
        "users": args.users,
        "dim": dim,
        "k": K,
        "server_args": args.server_args,
        "index": info["index"],
        "server": served,
        "in_process_floor": floors,
        "throughput_vs_floor": {name: served[name]["per_second"] / floor_rate for name in meets},
        "target_met": meets,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
    }
    publish("\n".join(lines), result, args.output)


if __name__ == "__main__":
    main()
