"""serve: a tiny trained model's export behind HTTP (LitServe), called with a real HTTP client on a free
loopback port — every endpoint, every kind of bad request, and an item added live that a later /similar
returns — plus the parts that need no server: batches with bad requests in them, the batching loop, the
additions file shared by several processes."""

from __future__ import annotations

import base64
import io
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import tiny_config
from PIL import Image

from mmrec_lightning.__main__ import COMMANDS
from mmrec_lightning.cli import RecommenderCLI
from mmrec_lightning.data.schema import PreparedDataset
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.export.exporter import VectorExporter
from mmrec_lightning.export.recommend import ExportedModel
from mmrec_lightning.serve.additions import AddedItems, NewItem
from mmrec_lightning.serve.batching import DrainingLoop
from mmrec_lightning.serve.catalogue import ServedExport
from mmrec_lightning.serve.requests import Rejected
from mmrec_lightning.serve.search import RecommendAPI
from mmrec_lightning.serve.server import _parser
from mmrec_lightning.serve.server import main as serve

KEY = {"X-API-Key": "test-key"}


@pytest.fixture(scope="module")
def export(tmp_path_factory, synthetic_dir, tokenizer_dir):
    """A tiny model trained one epoch and exported with exact indexes."""
    tmp_path = tmp_path_factory.mktemp("serve")
    config = tiny_config(tmp_path, synthetic_dir, tokenizer_dir, max_epochs=1)
    best = RecommenderCLI(args=["fit", "--config", str(config)]).trainer.checkpoint_callback.best_model_path
    cli = RecommenderCLI(
        args=["predict", "--config", str(config), "--ckpt_path", best, "--export.enabled=true", "--export.index=exact"]
    )
    return next(cb for cb in cli.trainer.callbacks if isinstance(cb, VectorExporter)).path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(export, tmp_path_factory):
    """``python -m mmrec_lightning serve`` on a free port of 127.0.0.1 with an API key and a 1 MiB body limit;
    stopped (SIGTERM, as a service manager would) after the module's tests."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    command = [sys.executable, "-m", "mmrec_lightning", "serve", "--export", str(export), "--port", str(port)]
    env = {**os.environ, "LIT_SERVER_API_KEY": KEY["X-API-Key"]}
    with open(log, "w") as output:
        process = subprocess.Popen(
            [*command, "--max_request_mb", "1"],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the server was not ready in 180 s:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/health", headers=KEY, timeout=2).text == "ok":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        with httpx.Client(base_url=url, headers=KEY, timeout=60) as client:
            yield client
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the session this fixture started: the server and its workers
            process.wait()
    assert process.returncode is not None


def cold_item(synthetic_dir) -> tuple[int, bytes, str]:
    """A catalogue item the model never trained on: its index, encoded image and text."""
    dataset = PreparedDataset(synthetic_dir)
    cold = int(dataset.metadata["cold_items"][0])
    return cold, dataset.items.column("image")[cold].as_py(), dataset.items.column("text")[cold].as_py()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` pixels in a few bytes: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_health_and_info_describe_the_export(server, export):
    assert server.get("/health").text == "ok"
    info = server.get("/info").json()
    assert info["model"] == "mmrec_lightning.models.multimodal.MultimodalRecommender"
    assert info["counts"]["users"] == 60 and info["counts"]["items"] == 40
    assert info["index"]["recommend"]["type"] == info["index"]["similar"]["type"] == "IndexFlatIP"
    assert info["item_outputs"] == {"modality_weights": ["image", "text", "id"]}
    assert info["server"]["api_key"] is True and info["server"]["max_request_bytes"] == 2**20


def test_recommend_answers_what_the_export_answers_with_each_items_modality_weights(server, export):
    answer = server.post("/recommend", json={"user": "user3", "k": 5})
    assert answer.status_code == 200
    items = answer.json()["items"]
    expected = ExportedModel(export).for_user("user3", k=5)
    assert [i["item"] for i in items] == [r.item for r in expected]
    assert [i["score"] for i in items] == pytest.approx([r.score for r in expected], rel=1e-5)
    weights = np.load(export / "item_modality_weights.npy")
    first = int(items[0]["item"].removeprefix("item"))
    assert list(items[0]["modality_weights"].values()) == pytest.approx(weights[first].tolist(), rel=1e-6)
    assert sum(items[0]["modality_weights"].values()) == pytest.approx(1.0, abs=1e-5)

    everything = server.post("/recommend", json={"user": "user3", "k": 40, "exclude_seen": False}).json()["items"]
    scores = np.load(export / "item_vectors.npy") @ np.load(export / "user_vectors.npy")[3]
    assert [i["item"] for i in everything] == [f"item{i}" for i in np.argsort(-scores, kind="stable")]


def test_similar_answers_the_cosine_neighbours(server, export):
    answer = server.post("/similar", json={"item": "item4", "k": 3}).json()
    assert answer["item"] == "item4"
    assert [i["item"] for i in answer["items"]] == [r.item for r in ExportedModel(export).similar_items("item4", 3)]


def test_a_new_item_is_encoded_and_once_added_is_returned_by_a_later_similar(server, export, synthetic_dir):
    cold, image, text = cold_item(synthetic_dir)
    form = {"text": text, "id": "twin", "add": "true", "k": "3"}
    answer = server.post("/items", files={"image": ("twin.png", image, "image/png")}, data=form)
    assert answer.status_code == 200, answer.text
    new = answer.json()
    assert new["item"] == "twin" and new["added"] is True and len(new["vector"]) == 16
    assert new["items"][0]["item"] == f"item{cold}" and new["items"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert len(new["users"]) == 3 and set(new["modality_weights"]) == {"image", "text", "id"}

    later = server.post("/similar", json={"item": f"item{cold}", "k": 3}).json()["items"]
    assert later[0]["item"] == "twin" and later[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert later[0]["modality_weights"] == new["modality_weights"]
    assert server.post("/similar", json={"item": "twin", "k": 1}).json()["items"][0]["item"] == f"item{cold}"
    assert server.get("/info").json()["counts"]["added_items"] == 1

    again = server.post("/items", json={"text": "another", "id": "twin", "add": True})
    assert again.status_code == 409 and "already exists" in again.json()["detail"]
    # the same content as JSON with a base64 image, not added: the same vector
    body = {"image": base64.b64encode(image).decode(), "text": text}
    probe = server.post("/items", json=body).json()
    assert probe["added"] is False and probe["item"] is None
    assert probe["vector"] == pytest.approx(new["vector"], abs=1e-5)
    # persisted beside the export: a restarted server (a new reader) has it
    assert ServedExport(export).item_row("twin") == 40
    assert pq.read_table(export / "added_items.parquet").column("raw_id").to_pylist() == ["twin"]


BAD_REQUESTS = {
    "unknown user": ("/recommend", {"json": {"user": "nobody"}}, 404, "user 'nobody' is not in this export"),
    "unknown item": ("/similar", {"json": {"item": "nothing"}}, 404, "item 'nothing' is not in this export"),
    "k as a string": ("/recommend", {"json": {"user": "user1", "k": "5"}}, 422, "k: Input should be a valid integer"),
    "k of 0": ("/similar", {"json": {"item": "item1", "k": 0}}, 422, "k: Input should be greater than or equal to 1"),
    "flag as a number": ("/recommend", {"json": {"user": "user1", "exclude_seen": 1}}, 422, "exclude_seen: Input"),
    "user as a number": ("/recommend", {"json": {"user": 3}}, 422, "user: Input should be a valid string"),
    "missing field": ("/recommend", {"json": {"k": 3}}, 422, "user: Field required"),
    "unknown field": ("/similar", {"json": {"item": "item1", "n": 3}}, 422, "n: Extra inputs are not permitted"),
    "not JSON": (
        "/recommend",
        {"content": b'{"user":', "headers": {"Content-Type": "application/json"}},
        400,
        "not valid JSON",
    ),
    "JSON array": ("/recommend", {"json": ["user1"]}, 400, "the body must be a JSON object"),
    "form to a JSON endpoint": ("/similar", {"data": {"item": "item1"}}, 415, "/similar takes application/json"),
    "oversized body": ("/items", {"json": {"text": "x" * 2_000_000}}, 413, "larger than the 1,048,576 bytes"),
    "no image and no text": ("/items", {"json": {"k": 3}}, 422, "give the new item's image, its text, or both"),
    "not base64": ("/items", {"json": {"image": "%%%"}}, 422, "image: not valid base64"),
    "image not an image": (
        "/items",
        {"files": {"image": ("x.jpg", b"this is not a picture", "image/jpeg")}},
        422,
        "image: not a readable image",
    ),
    "decompression bomb": (
        "/items",
        {"files": {"image": ("bomb.png", png_header(100_000, 100_000), "image/png")}},
        413,
        "decompression bomb",
    ),
    "too many pixels": (
        "/items",
        {"json": {"image": base64.b64encode(png_header(5000, 5000)).decode()}},
        413,
        "5000x5000 pixels, more than the 16,000,000",
    ),
    "add as a word": (
        "/items",
        {"files": {"text": (None, "a lamp"), "add": (None, "maybe")}},  # a multipart form without a file
        422,
        "add: expected true or false",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_a_bad_request_gets_a_4xx_with_one_message(server, case):
    path, request, status, message = BAD_REQUESTS[case]
    answer = server.post(path, **request)
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and message in detail and "Traceback" not in answer.text


def test_without_the_api_key_every_endpoint_refuses(server):
    url = str(server.base_url)
    for path in ("/health", "/info"):
        assert httpx.get(f"{url}{path}").status_code in (401, 403)
    assert httpx.post(f"{url}/recommend", json={"user": "user1"}).status_code in (401, 403)
    wrong = httpx.post(f"{url}/recommend", json={"user": "user1"}, headers={"X-API-Key": "wrong"})
    assert wrong.status_code == 401 and "API Key" in wrong.json()["detail"]


def test_a_bad_request_in_a_batch_is_answered_alone(export):
    api = RecommendAPI(str(export), str(export / "batch_additions.parquet"))
    api.setup("cpu")
    requests = [{"user": "user1", "k": 2}, {"user": "nobody"}, {"user": "user2", "k": "x"}, {"user": "user2", "k": 2}]
    answers = [api.encode_response(a) for a in api.predict([api.decode_request(r) for r in requests])]
    assert [a["user"] for a in (answers[0], answers[3])] == ["user1", "user2"]
    assert [a.status_code for a in (answers[1], answers[2])] == [404, 422]
    alone = api.encode_response(api.predict([api.decode_request(requests[3])])[0])
    assert alone == answers[3]


def test_the_new_items_api_encodes_a_batch_as_it_encodes_each_item(export, synthetic_dir):
    from mmrec_lightning.serve.new_items import NewItemsAPI

    api = NewItemsAPI(str(export), str(export / "batch_additions.parquet"))
    api.setup("cpu")
    _, image, text = cold_item(synthetic_dir)
    requests = [
        {"image": base64.b64encode(image).decode(), "text": text},
        {"image": base64.b64encode(b"garbage").decode()},
        {"text": "a rustic glass lamp"},
    ]
    batch = api.predict([api.decode_request(r) for r in requests])
    assert isinstance(batch[1], Rejected) and batch[1].status == 422
    for index in (0, 2):
        alone = api.predict([api.decode_request(requests[index])])[0]
        assert batch[index]["vector"] == pytest.approx(alone["vector"], abs=1e-5)


def test_the_loop_blocks_for_a_request_then_takes_those_queued_behind_it(monkeypatch):
    class API:
        max_batch_size, batch_timeout, request_timeout = 3, 0.0, 30

    class Transport:
        def send(self, item, consumer_id):  # START answers are only sent when LitServe restarts workers
            raise AssertionError("nothing to send")

    loop = DrainingLoop()
    requests: queue.Queue = queue.Queue()
    for uid in "abcd":
        requests.put((0, uid, time.monotonic(), {"user": uid}))
    batch, timed_out = loop.get_batch_requests(API(), requests, Transport())
    assert [uid for _, uid, _ in batch] == ["a", "b", "c"] and timed_out == []
    batch, _ = loop.get_batch_requests(API(), requests, Transport())
    assert [uid for _, uid, _ in batch] == ["d"]
    monkeypatch.setattr("mmrec_lightning.serve.batching.IDLE_WAIT", 0.01)
    assert loop.get_batch_requests(API(), requests, Transport()) == ([], [])
    requests.put((0, "old", time.monotonic() - 60, {}))
    assert loop.get_batch_requests(API(), requests, Transport()) == ([], [(0, "old")])


def test_items_added_through_one_process_are_seen_by_another(tmp_path):
    path = tmp_path / "added.parquet"
    one, other = (AddedItems(path, 4, {"modality_weights": ["image", "text"]}) for _ in range(2))
    item = NewItem("a", "first", np.ones(4, np.float32), {"modality_weights": np.array([0.5, 0.5], np.float32)})
    assert one.add([item, item], taken=lambda raw: False) == [True, False]  # the second: the same id
    assert other.refresh() and other.ids == ["a"] and other.vectors.tolist() == [[1.0] * 4]
    second = NewItem("b", None, np.zeros(4, np.float32), {"modality_weights": np.array([1.0, 0.0], np.float32)})
    assert other.add([second], taken=lambda raw: raw == "item0") == [True]
    assert one.add([NewItem("item0", None, np.zeros(4), second.outputs)], taken=lambda raw: raw == "item0") == [False]
    assert one.ids == ["a", "b"] and one.outputs["modality_weights"].shape == (2, 2)  # read under the lock
    assert sorted(p.name for p in tmp_path.iterdir()) == [".added.parquet.lock", "added.parquet"]  # no temporaries


def test_the_command_binds_to_loopback_by_default_and_names_bad_options(export):
    assert "serve" in COMMANDS
    defaults = _parser().parse_args(["--export", str(export)])
    assert defaults.host == "127.0.0.1" and defaults.port == 8000
    with pytest.raises(ConfigurationError, match="LitServe binds one of"):
        serve(["--export", str(export), "--host", "10.0.0.1"])
    with pytest.raises(ConfigurationError, match="no export.json"):
        serve(["--export", str(export.parent)])


def test_an_image_upload_is_decoded_with_the_pixel_limit():
    from mmrec_lightning.serve.new_items import read_image

    buffer = io.BytesIO()
    Image.new("RGBA", (40, 30), (255, 0, 0, 0)).save(buffer, format="PNG")
    image = read_image(buffer.getvalue())
    assert image.mode == "RGB" and image.size == (40, 30) and image.getpixel((0, 0)) == (255, 255, 255)
    assert read_image(buffer.getvalue(), max_pixels=100) == Rejected(
        413, "image: 40x30 pixels, more than the 100 this server decodes"
    )
