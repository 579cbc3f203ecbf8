"""``python -m mmrec_lightning serve``: an export behind HTTP, on LitServe.

    python -m mmrec_lightning serve --export runs/demo/export [--host 127.0.0.1] [--port 8000] [--workers N]

Endpoints: ``POST /recommend``, ``POST /similar``, ``POST /items`` (each answered by its own LitServe
workers, requests batched), ``GET /health`` (200 once every worker is ready) and ``GET /info``. With
``LIT_SERVER_API_KEY`` set in the environment, every endpoint wants it in an ``X-API-Key`` header.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import Depends
from jsonargparse import ArgumentParser

from mmrec_lightning.data.schema import PreparedDataset
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.export.manifest import exported_checkpoint, read_manifest
from mmrec_lightning.serve.additions import ADDITIONS, AddedItems
from mmrec_lightning.serve.catalogue import open_index
from mmrec_lightning.serve.guard import RequestGuard
from mmrec_lightning.serve.new_items import MAX_IMAGE_PIXELS, NewItemsAPI
from mmrec_lightning.serve.search import RecommendAPI, SimilarAPI

PROG = "python -m mmrec_lightning serve"
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe binds
API_KEY = "LIT_SERVER_API_KEY"  # LitServe's own: read when litserve is imported


def describe_index(path: Path) -> dict[str, Any]:
    """An index's FAISS type and search settings, read from its memory map."""
    index = open_index(path)
    described: dict[str, Any] = {"type": type(index).__name__, "items": int(index.ntotal)}
    if hasattr(index, "nprobe"):
        described |= {"lists": int(index.nlist), "probed": int(index.nprobe)}
    if hasattr(index, "hnsw"):
        described["ef_search"] = int(index.hnsw.efSearch)
    return described


class ExportInfo:
    """``GET /info``: the model, dataset, counts (added items live) and indexes of the served export, and how
    the server runs."""

    def __init__(self, path: Path, additions: Path, settings: dict[str, Any]) -> None:
        self.manifest = read_manifest(path)
        self.path, self.settings = path, settings
        self.added = AddedItems(additions, self.manifest["dim"], self.manifest.get("item_outputs") or {})
        self.indexes = {name: describe_index(path / f"{name}.faiss") for name in ("recommend", "similar")}

    def __call__(self) -> dict[str, Any]:
        self.added.refresh()
        manifest = self.manifest
        return {
            "export": str(self.path.resolve()),
            "model": manifest["model"],
            "checkpoint": manifest.get("checkpoint"),
            "dataset": manifest["dataset"],
            "dim": manifest["dim"],
            "counts": {"users": manifest["users"], "items": manifest["items"], "added_items": len(self.added)},
            "item_outputs": manifest.get("item_outputs") or {},
            "index": {"built_with": manifest.get("index"), **self.indexes},
            "additions": str(self.added.path),
            "server": self.settings,
        }


def build_server(
    export: str | Path,
    *,
    additions: str | Path | None = None,
    workers: int = 1,
    max_batch_size: int = 32,
    batch_timeout: float = 0.0,
    max_request_mb: float = 8.0,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    new_items: bool = True,
    timeout: float = 30.0,
    threads: int = 1,
    fast_queue: bool = False,
) -> ls.LitServer:
    """The LitServer for an export (see the module's docstring); ``run`` starts it.

    Args:
        export: the export folder.
        additions: the file of items added while serving; default ``added_items.parquet`` in the export.
        workers: worker processes per endpoint.
        max_batch_size: the most requests one worker answers together.
        batch_timeout: seconds a worker waits for more requests after the first of a batch (0: it takes
            the requests already queued, so batches grow with the load).
        max_request_mb: the largest request body, in MiB.
        max_image_pixels: the largest image (width x height) ``/items`` decodes.
        new_items: serve ``/items`` (it loads the export's checkpoint, which must still exist).
        timeout: seconds a request may wait for a worker before a 504.
        threads: threads of each worker (FAISS, torch).
        fast_queue: LitServe's ZeroMQ transport for the answers, instead of multiprocessing queues.
    """
    path = Path(export)
    manifest = read_manifest(path)
    PreparedDataset(manifest["dataset"])  # exclude_seen reads it: name a missing dataset now, not per request
    if new_items:
        exported_checkpoint(path, manifest)
    additions = Path(additions) if additions else path / ADDITIONS
    batching = {"max_batch_size": max_batch_size, "batch_timeout": batch_timeout, "threads": threads}
    apis: list[ls.LitAPI] = [RecommendAPI(str(path), str(additions), **batching)]
    apis.append(SimilarAPI(str(path), str(additions), **batching))
    if new_items:
        apis.append(NewItemsAPI(str(path), str(additions), max_image_pixels=max_image_pixels, **batching))
    max_bytes = int(max_request_mb * 2**20)
    guard = {"max_bytes": max_bytes, "json_paths": [api.api_path for api in apis], "multipart_paths": ["/items"]}
    server = ls.LitServer(
        apis,
        accelerator="cpu",
        workers_per_device=workers,
        timeout=timeout,
        info_path="/info/litserve",  # /info is the export's, below
        middlewares=[(RequestGuard, guard)],
        fast_queue=fast_queue,
    )
    settings = {
        "endpoints": [api.api_path for api in apis],
        "workers_per_endpoint": workers,
        **batching,
        "max_request_bytes": max_bytes,
        "max_image_pixels": max_image_pixels,
        "api_key": bool(os.environ.get(API_KEY)),
    }
    info = ExportInfo(path, additions, settings)
    server.app.add_api_route("/info", info, methods=["GET"], dependencies=[Depends(server.setup_auth())])
    return server


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Serve an export over HTTP (LitServe).")
    parser.add_argument("--export", type=str, required=True, help="the export folder (written by `export`)")
    parser.add_argument("--host", type=str, default="127.0.0.1", help=f"the address to bind: one of {HOSTS}")
    parser.add_argument("--port", type=int, default=8000, help="the port (1024-65535)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes per endpoint")
    parser.add_argument(
        "--api_servers", type=int | None, default=1, help="HTTP processes (default 1; None: one per worker)"
    )
    parser.add_argument("--additions", type=str | None, default=None, help="file of added items (default in export)")
    parser.add_argument("--max_batch_size", type=int, default=32, help="the most requests answered together")
    parser.add_argument("--batch_timeout", type=float, default=0.0, help="seconds to wait for more requests")
    parser.add_argument("--max_request_mb", type=float, default=8.0, help="the largest request body, MiB")
    parser.add_argument("--max_image_pixels", type=int, default=MAX_IMAGE_PIXELS, help="the largest image decoded")
    parser.add_argument("--new_items", type=bool, default=True, help="serve /items (loads the checkpoint)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a request may wait for a worker")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker (FAISS, torch)")
    parser.add_argument("--fast_queue", type=bool, default=False, help="answers over ZeroMQ (LitServe's fast_queue)")
    parser.add_argument("--log_level", type=str, default="warning", help="uvicorn / LitServe log level")
    return parser


def _stop_on_sigterm() -> None:
    """SIGTERM (a service manager, ``kill``) shuts down like Ctrl-C: LitServe then stops its HTTP and worker
    processes instead of leaving them running."""

    main_process = os.getpid()

    def interrupt(signum, frame):
        if os.getpid() == main_process:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)  # an HTTP process LitServe forked: stop as it would have
        signal.raise_signal(signum)

    signal.signal(signal.SIGTERM, interrupt)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.host not in HOSTS:
        raise ConfigurationError(f"--host {args.host}: LitServe binds one of {', '.join(HOSTS)}")
    if not 1024 <= args.port <= 65535:
        raise ConfigurationError(f"--port {args.port}: give a port from 1024 to 65535")
    if args.workers < 1 or args.max_batch_size < 1 or args.batch_timeout < 0:
        raise ConfigurationError("--workers and --max_batch_size must be at least 1, --batch_timeout at least 0")
    server = build_server(
        args.export,
        additions=args.additions,
        workers=args.workers,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
        max_request_mb=args.max_request_mb,
        max_image_pixels=args.max_image_pixels,
        new_items=args.new_items,
        timeout=args.timeout,
        threads=args.threads,
        fast_queue=args.fast_queue,
    )
    _stop_on_sigterm()
    key = " (X-API-Key required)" if os.environ.get(API_KEY) else ""
    print(
        f"serving {args.export} at http://{args.host}:{args.port}{key}; ready when GET /health answers ok", flush=True
    )
    server.run(
        host=args.host,
        port=args.port,
        num_api_servers=args.api_servers,
        generate_client_file=False,
        log_level=args.log_level,
    )
