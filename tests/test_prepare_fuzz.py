"""Random mixtures of malformed input through `prepare --source table`: either one line naming a file and exit
code 2, or a dataset whose counts agree with what was written; never a traceback, and never a byte of a file
outside the folders named."""

import io
import random
import sys

import pyarrow.ipc as ipc
import pytest
from PIL import Image

from mmrec_lightning.__main__ import main as entry_point
from mmrec_lightning.data.schema import PreparedDataset


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((16, 16), 40 + seed).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


GOOD_TIMES = ["1700000000", "1700000500", "2024-01-02", "2024-01-03T10:00:00Z"]
BAD_TIMES = ["inf", "nan", "", "yesterday", "-INF"]
GOOD_RATINGS = ["4", "3.5", "", "5"]
BAD_RATINGS = ["inf", "five", "NaN"]
TEXTS = ["A film", "", "<b>Bold</b> &amp; more", "  ", "Plain text"]
PICTURES = ["p0.jpg", "p1.jpg", "p2.jpg", "broken.jpg", "link.jpg", "../outside.jpg", "none.jpg", ""]
FAULTS = ("time", "rating", "unknown_item", "no_interactions", "no_items", "outside_only")


def _write_case(rng: random.Random, root, outside) -> list[str]:
    """Files for one case under ``root``, each fault injected with probability 0.15; the options naming them."""
    faults = {fault for fault in FAULTS if rng.random() < 0.15}
    images = root / "images"
    images.mkdir(parents=True)
    for i in range(3):
        (images / f"p{i}.jpg").write_bytes(_jpeg(i))
    (images / "broken.jpg").write_bytes(_jpeg(9)[:40])  # a truncated JPEG
    (images / "link.jpg").symlink_to(outside)  # a link pointing out of the image folder
    pictures = ["../outside.jpg", str(outside), "link.jpg"] if "outside_only" in faults else [*PICTURES, str(outside)]
    item_ids = [] if "no_items" in faults else [f"i{i}" for i in range(rng.randint(1, 6))]
    rows = [f"{item},{rng.choice(TEXTS)},{rng.choice(pictures)}" for item in item_ids]
    (root / "items.csv").write_text("item_id,title,image\n" + "".join(f"{row}\n" for row in rows))
    lines = []
    for _ in range(0 if "no_interactions" in faults else rng.randint(1, 25)):
        item = rng.choice(item_ids or ["i0"])
        lines.append([f"u{rng.randrange(4)}", item, rng.choice(GOOD_TIMES), rng.choice(GOOD_RATINGS)])
    for fault, column, values in (("time", 2, BAD_TIMES), ("rating", 3, BAD_RATINGS), ("unknown_item", 1, ["i99"])):
        if fault in faults and lines:
            rng.choice(lines)[column] = rng.choice(values)
    (root / "events.csv").write_text(
        "user_id,item_id,timestamp,rating\n" + "".join(",".join(line) + "\n" for line in lines)
    )
    return [
        *("--interactions", str(root / "events.csv"), "--items", str(root / "items.csv")),
        *("--timestamp_column", "timestamp", "--rating_column", "rating", "--text_columns", "title"),
        *("--image_column", "image", "--image_root", str(images)),
    ]


@pytest.mark.parametrize("seed", range(40))
def test_malformed_tables_fail_in_one_line_or_prepare_consistently(seed, tmp_path, monkeypatch, capsys):
    rng = random.Random(seed)
    outside = tmp_path / "outside.jpg"  # beside the data, never inside the folders named
    secret = _jpeg(100 + seed)
    outside.write_bytes(secret)
    root = tmp_path / "data"
    options = _write_case(rng, root, outside)
    output = tmp_path / "prepared"
    monkeypatch.setattr(
        sys, "argv", ["mmrec_lightning", "prepare", "--source", "table", "--output", str(output), *options]
    )
    try:
        entry_point()
    except SystemExit as exit_info:
        assert exit_info.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(root) in lines[0], lines
        assert not output.exists()
        return
    dataset = PreparedDataset(output)
    dataset.validate()
    counts = dataset.metadata["counts"]
    with ipc.open_file(output / "interactions.arrow") as reader:
        assert sum(counts["interactions"].values()) == reader.read_all().num_rows
    images = [value for value in dataset.items.column("image").to_pylist() if value is not None]
    assert counts["items_with_image"] == len(images) <= counts["items"]
    assert all(secret not in path.read_bytes() for path in output.rglob("*") if path.is_file())
