"""The real-data source adapters, each on a tiny copy of its layout written into tmp_path."""

import dataclasses
import gzip
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmrec_lightning.data.prepare import main as prepare
from mmrec_lightning.data.schema import PreparedDataset, write_prepared
from mmrec_lightning.data.sources import SOURCES
from mmrec_lightning.data.sources.amazon import AmazonOptions
from mmrec_lightning.data.sources.hm import HMOptions
from mmrec_lightning.data.sources.mmrec import MMRecOptions
from mmrec_lightning.data.sources.movielens import GENRES_100K, MovieLensOptions
from mmrec_lightning.data.sources.table import TableOptions
from mmrec_lightning.data.sources.text import clean_text
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.features.files import SourceFeatures, feature_file, read_features


def _jpeg(path: Path, colour: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format="JPEG")
    return path


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


def _prepare(options, tmp_path: Path) -> PreparedDataset:
    """Run a source through write_prepared, as the prepare command does."""
    name = next(name for name, (kind, _) in SOURCES.items() if kind is type(options))
    data = SOURCES[name][1](options)
    path = write_prepared(
        tmp_path / "prepared",
        interactions=data.interactions,
        items=data.items,
        users=data.users,
        metadata=data.metadata,
        features=data.features,
    )
    dataset = PreparedDataset(path)
    dataset.validate()
    return dataset


def _items(dataset: PreparedDataset) -> dict[str, dict]:
    """raw id -> the item's row, its category as a name."""
    rows = dataset.items.to_pylist()
    for row in rows:
        row["category"] = dataset.category_names[row["category"]] if row["category"] >= 0 else None
    return {row["raw_id"]: row for row in rows}


def test_clean_text_strips_html_and_whitespace():
    assert clean_text("<p>Tom &amp; Jerry</p>\n\n  <br/>run &lt;fast&gt;") == "Tom & Jerry run"
    assert clean_text("a <b>bold</b>, <span class='x'>quiet</span> word<br>next") == "a bold, quiet word next"
    assert clean_text("5 &lt; 6 and 7 > 3") == "5 < 6 and 7 > 3"
    assert clean_text(["Soft.", None, "<i>Warm</i>"]) == "Soft. Warm"
    assert clean_text("  <br> ") is None and clean_text(float("nan")) is None


# --- mmrec ----------------------------------------------------------------------------------------------------


def _mmrec_folder(tmp_path: Path) -> Path:
    rows = [(0, 0, 5, 100, 0), (0, 1, 4, 101, 0), (0, 2, 3, 102, 2), (1, 1, 5, 103, 0), (1, 3, 2, 104, 1)]
    lines = ["userID\titemID\trating\ttimestamp\tx_label", *("\t".join(map(str, row)) for row in rows)]
    folder = tmp_path / "baby"
    _write(folder / "baby.inter", "\n".join(lines) + "\n")
    np.save(folder / "image_feat.npy", np.arange(12, dtype=np.float32).reshape(4, 3))
    return folder


def test_mmrec_keeps_its_split_and_ids_and_copies_the_features_in_item_order(tmp_path):
    folder = _mmrec_folder(tmp_path)
    dataset = _prepare(MMRecOptions(path=str(folder)), tmp_path)
    assert dataset.metadata["counts"]["interactions"] == {"train": 3, "valid": 1, "test": 1}
    assert dataset.items.column("raw_id").to_pylist() == ["0", "1", "2", "3"]  # MMRec's indices stay
    assert list(dataset.split("test").row(0)) == [2] and list(dataset.split("valid").row(1)) == [3]
    assert dataset.metadata["split"]["method"] == "source"
    copied = read_features(feature_file(dataset.path, "image"))
    assert len(copied) == 4
    np.testing.assert_array_equal(copied, np.load(folder / "image_feat.npy"))
    assert not feature_file(dataset.path, "text").exists()
    provenance = json.loads((dataset.path / "features" / "features.json").read_text())
    assert Path(provenance["image"]["source_file"]) == (folder / "image_feat.npy").resolve()


def test_source_features_follow_the_items_raw_ids_when_items_are_dropped(tmp_path):
    np.save(tmp_path / "f.npy", np.arange(12, dtype=np.float32).reshape(4, 3))
    rows = SourceFeatures(tmp_path / "f.npy").rows(np.array(["1", "3"]))
    np.testing.assert_array_equal(rows, [[3, 4, 5], [9, 10, 11]])


def test_mmrec_features_must_have_a_row_per_item(tmp_path):
    folder = _mmrec_folder(tmp_path)
    np.save(folder / "text_feat.npy", np.zeros((3, 5), np.float32))
    with pytest.raises(ConfigurationError, match=r"text_feat.npy: float32 \[3, 5\], expected a \[4, d\] matrix"):
        SOURCES["mmrec"][1](MMRecOptions(path=str(folder)))


def test_mmrec_features_from_anywhere_npy_or_pt_are_recorded_and_summarised(tmp_path):
    import torch

    from mmrec_lightning.data.prepare import summary

    folder = _mmrec_folder(tmp_path)
    (folder / "image_feat.npy").rename(tmp_path / "image_feat.npy")  # MMRec's layout: a folder above the .inter
    text = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 4.0], [5.0, 6.0]])
    torch.save(text, tmp_path / "text_feat.pt")
    options = MMRecOptions(path=str(folder), image_features=str(tmp_path / "image_feat.npy"),
                           text_features=str(tmp_path / "text_feat.pt"))  # fmt: skip
    dataset = _prepare(options, tmp_path)
    np.testing.assert_array_equal(read_features(feature_file(dataset.path, "text")), text.numpy())
    assert dataset.metadata["features"]["text"] == {
        "source_file": str((tmp_path / "text_feat.pt").resolve()), "shape": [4, 2], "items_with_features": 3
    }  # fmt: skip
    assert dataset.metadata["features"]["image"]["shape"] == [4, 3]
    assert "text features 2-d for 3 items" in summary(dataset) and "image features 3-d for 4 items" in summary(dataset)


def test_a_named_feature_file_must_exist_and_be_a_tensor(tmp_path):
    folder = _mmrec_folder(tmp_path)
    with pytest.raises(ConfigurationError, match=r"--text_features .*missing.npy: no such file"):
        SOURCES["mmrec"][1](MMRecOptions(path=str(folder), text_features=str(tmp_path / "missing.npy")))
    import torch

    torch.save({"not": "a tensor"}, tmp_path / "dict.pt")
    with pytest.raises(ConfigurationError, match=r"--text_features .*dict.pt: not a readable .npy array or .pt"):
        SOURCES["mmrec"][1](MMRecOptions(path=str(folder), text_features=str(tmp_path / "dict.pt")))


def test_mmrec_names_the_line_of_a_bad_x_label(tmp_path):
    folder = _mmrec_folder(tmp_path)
    inter = folder / "baby.inter"
    inter.write_text(inter.read_text().replace("1\t3\t2\t104\t1", "1\t3\t2\t104\t7"))
    with pytest.raises(ConfigurationError, match=r"baby.inter line 6: x_label '7' is not 0 \(train\)"):
        SOURCES["mmrec"][1](MMRecOptions(path=str(folder)))


# --- movielens ------------------------------------------------------------------------------------------------


def _movie(movie: int, title: str, genres: tuple[str, ...]) -> str:
    flags = ["1" if genre in genres else "0" for genre in GENRES_100K]
    return "|".join([str(movie), title, "01-Jan-1995", "", "http://imdb/x", *flags])


def _ml_100k(tmp_path: Path) -> Path:
    folder = tmp_path / "ml-100k"
    ratings = [(1, 1, 5, 881250949), (1, 2, 3, 881250950), (2, 10, 4, 881250951), (3, 1, 1, 881250952)]
    _write(folder / "u.data", "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings))
    movies = [
        _movie(1, "Toy Story (1995)", ("Animation", "Comedy")),
        _movie(2, "Misérables, Les (1995)", ("Drama",)),
        _movie(10, "Richard III (1995)", ("unknown",)),
    ]
    _write(folder / "u.item", "\n".join(movies) + "\n", encoding="latin-1")
    return folder


def test_movielens_100k_with_posters_and_extra_text(tmp_path, caplog):
    folder = _ml_100k(tmp_path)
    posters = tmp_path / "posters"
    _jpeg(posters / "1.jpg")
    (posters / "2.jpg").write_bytes(b"\xff\xd8 not really a jpeg")  # corrupt; 10.jpg is missing
    extra = _write(
        tmp_path / "overviews.csv",
        'movie_id,overview,budget\n1,"<p>Toys &amp; a boy, alive.</p>",30\n1,a repeated row,0\n2,,1\n',
    )
    options = MovieLensOptions(
        path=str(folder), images=str(posters), items_csv=str(extra), items_csv_text_columns=["overview"]
    )
    dataset = _prepare(options, tmp_path)
    items = _items(dataset)
    assert list(items) == ["1", "2", "10"]  # numeric ids sort as numbers
    assert dataset.users.column("raw_id").to_pylist() == ["1", "2", "3"]
    assert items["1"]["text"] == "title: Toy Story (1995) | overview: Toys & a boy, alive."
    assert items["2"]["text"] == "title: Misérables, Les (1995)"  # latin-1 read; empty overview left out
    assert [items[m]["category"] for m in ("1", "2", "10")] == ["Animation", "Drama", None]
    assert dataset.category_names == ["Animation", "Drama"]
    assert Image.open(io.BytesIO(items["1"]["image"])).size == (8, 8)
    assert items["2"]["image"] is None and items["10"]["image"] is None
    assert dataset.metadata["dropped"] == {"missing_images": 1, "unreadable_images": 1}
    assert "10.jpg" in caplog.text and "item '10'" in caplog.text
    assert "overviews.csv: 1 rows repeat a movie id" in caplog.text
    assert dataset.interactions.column("rating").to_pylist() == [5.0, 3.0, 4.0, 1.0]


def test_movielens_drops_items_without_a_usable_image_when_asked(tmp_path):
    folder = _ml_100k(tmp_path)
    posters = tmp_path / "posters"
    _jpeg(posters / "1.jpg")
    (posters / "2.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    options = MovieLensOptions(path=str(folder), images=str(posters), drop_items_without=["image"])
    dataset = _prepare(options, tmp_path)
    assert dataset.items.column("raw_id").to_pylist() == ["1"]
    assert dataset.users.column("raw_id").to_pylist() == ["1", "3"]
    assert dataset.metadata["dropped"] == {
        "items_without_image": 2,
        "interactions_of_dropped_items": 2,
        "unreadable_images": 0,
    }


def test_movielens_1m_reads_double_colon_files(tmp_path):
    folder = tmp_path / "ml-1m"
    _write(folder / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    _write(
        folder / "movies.dat",
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n1193::One Flew Over the Cuckoo's "
        'Nest "(1975)"::Drama\n',
        encoding="latin-1",
    )
    dataset = _prepare(MovieLensOptions(path=str(folder), split="loo"), tmp_path)
    items = _items(dataset)
    assert list(items) == ["661", "1193"]
    assert items["661"]["category"] == "Animation" and items["1193"]["category"] == "Drama"
    assert items["1193"]["text"] == 'One Flew Over the Cuckoo\'s Nest "(1975)"'  # bare quotes are text
    assert dataset.metadata["counts"]["interactions"] == {"train": 2, "valid": 0, "test": 1}


def test_movielens_errors_name_the_file_and_line(tmp_path):
    folder = _ml_100k(tmp_path)
    (folder / "u.data").write_text("1\t1\t5\t881250949\n1\t2\tfive\t881250950\n")
    with pytest.raises(ConfigurationError, match=r"u.data line 2: rating 'five' is not a number"):
        SOURCES["movielens"][1](MovieLensOptions(path=str(folder)))
    (folder / "u.data").write_text("1,1,5,881250949\n")
    with pytest.raises(ConfigurationError, match=r"u.data: expected 4 fields separated by '\\t'"):
        SOURCES["movielens"][1](MovieLensOptions(path=str(folder)))
    with pytest.raises(ConfigurationError, match="no MovieLens ratings file"):
        SOURCES["movielens"][1](MovieLensOptions(path=str(tmp_path)))


# --- amazon ---------------------------------------------------------------------------------------------------


def _amazon_2014(tmp_path: Path) -> tuple[Path, Path]:
    reviews = [
        {"reviewerID": "A1", "asin": "B001", "overall": 5.0, "unixReviewTime": 1300000000},
        {"reviewerID": "A1", "asin": "B002", "overall": 4.0, "unixReviewTime": 1300000100},
        {"reviewerID": "A2", "asin": "B001", "overall": 3.0, "unixReviewTime": 1300000200},
        {"reviewerID": "A2", "asin": "B999", "overall": 2.0, "unixReviewTime": 1300000300},  # no metadata
    ]
    reviews_path = tmp_path / "reviews_Baby.json.gz"
    with gzip.open(reviews_path, "wt", encoding="utf-8") as file:
        file.writelines(json.dumps(review) + "\n" for review in reviews)
    metadata = [  # 2014: Python literals, not JSON
        {
            "asin": "B001",
            "title": "Baby <b>Monitor</b>",
            "description": "Watch &amp; listen.<br/>Night   light.",
            "categories": [["Baby", "Safety", "Monitors"], ["Electronics"]],
            "imUrl": "http://images.amazon.com/B001.jpg",
        },
        {"asin": "B002", "title": "Rattle", "categories": [["Baby", "Toys"]]},
        {"asin": "B003", "title": "Bib"},
    ]
    metadata_path = _write(tmp_path / "meta_Baby.json", "".join(repr(record) + "\n" for record in metadata))
    return reviews_path, metadata_path


def test_amazon_2014_gzipped_reviews_with_python_literal_metadata(tmp_path, caplog):
    reviews, metadata = _amazon_2014(tmp_path)
    _jpeg(tmp_path / "images" / "B001.jpg", "blue")
    options = AmazonOptions(reviews=str(reviews), metadata=str(metadata), images=str(tmp_path / "images"))
    dataset = _prepare(options, tmp_path)
    items = _items(dataset)
    assert list(items) == ["B001", "B002", "B003"]  # B003 has no reviews: kept, and cold
    assert items["B001"]["text"] == "title: Baby Monitor | description: Watch & listen. Night light."
    assert items["B002"]["text"] == "title: Rattle"
    assert [items[a]["category"] for a in items] == ["Monitors", "Toys", None]
    assert items["B001"]["image"] is not None and items["B002"]["image"] is None
    assert dataset.metadata["dropped"] == {
        "interactions_with_unknown_item": 1,
        "missing_images": 2,
        "unreadable_images": 0,
    }
    assert "B999" in caplog.text
    assert dataset.metadata["counts"]["interactions"] == {"train": 3, "valid": 0, "test": 0}
    assert dataset.interactions.column("timestamp").to_pylist()[0] == 1300000000


def test_amazon_2018_json_metadata_with_lists(tmp_path):
    reviews, _ = _amazon_2014(tmp_path)
    record = {
        "asin": "B001",
        "title": "Stroller",
        "description": ["<div>Folds flat.</div>", "Light &amp; strong."],
        "category": ["Baby Products", "Strollers"],
        "imageURL": [],
    }
    metadata = _write(tmp_path / "meta_2018.json", json.dumps(record) + "\n")
    dataset = _prepare(AmazonOptions(reviews=str(reviews), metadata=str(metadata)), tmp_path)
    (item,) = _items(dataset).values()
    assert item["text"] == "title: Stroller | description: Folds flat. Light & strong."
    assert item["category"] == "Baby Products"  # a flat list: its first name
    assert dataset.metadata["dropped"] == {"interactions_with_unknown_item": 2, "unreadable_images": 0}


def test_amazon_errors_name_the_file_and_line(tmp_path):
    reviews, metadata = _amazon_2014(tmp_path)
    unrelated = _write(tmp_path / "meta_other.json", '{"asin": "X1", "title": "Other"}\n')
    with pytest.raises(ConfigurationError, match="none of the 4 interactions in .*reviews_Baby.json.gz names an item"):
        SOURCES["amazon"][1](AmazonOptions(reviews=str(reviews), metadata=str(unrelated)))
    broken = _write(tmp_path / "reviews.json", '{"reviewerID": "A1", "asin": "B001", "overall": 5}\n')
    with pytest.raises(ConfigurationError, match="reviews.json line 1: no unixReviewTime"):
        SOURCES["amazon"][1](AmazonOptions(reviews=str(broken), metadata=str(metadata)))
    garbled = _write(tmp_path / "garbled.json", '{"asin": "B001"}\n{"asin": \n')
    with pytest.raises(ConfigurationError, match="garbled.json line 2: neither a JSON record nor a Python dict"):
        SOURCES["amazon"][1](AmazonOptions(reviews=str(reviews), metadata=str(garbled)))
    with pytest.raises(ConfigurationError, match="nowhere.json: file not found"):
        SOURCES["amazon"][1](AmazonOptions(reviews=str(tmp_path / "nowhere.json"), metadata=str(metadata)))


# --- hm -------------------------------------------------------------------------------------------------------


def _hm_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "hm"
    _write(
        folder / "articles.csv",
        "article_id,product_code,prod_name,product_type_name,detail_desc\n"
        '0108775015,0108775,Strap top,Vest top,"Jersey top with narrow straps, a <b>classic</b>."\n'
        "0108775044,0108775,Strap top (1),Vest top,\n"
        "110065001,0110065,OP T-shirt,Bra,Microfibre T-shirt bra.\n",  # saved without its leading zero
    )
    _write(
        folder / "transactions_train.csv",
        "t_dat,customer_id,article_id,price,sales_channel_id\n"
        "2018-09-20,c1,0108775015,0.05,2\n"
        "2018-09-20,c1,0110065001,0.03,2\n"
        "2018-09-21,c2,0108775044,0.05,1\n"
        "2018-09-22,c2,0108775015,0.05,1\n",
    )
    _jpeg(folder / "images" / "010" / "0108775015.jpg")
    return folder


def test_hm_keeps_leading_zeros_and_finds_the_images(tmp_path):
    dataset = _prepare(HMOptions(path=str(_hm_folder(tmp_path)), split="loo"), tmp_path)
    items = _items(dataset)
    assert list(items) == ["0108775015", "0108775044", "0110065001"]
    assert items["0108775015"]["image"] is not None
    assert items["0108775044"]["image"] is None and items["0110065001"]["image"] is None
    assert items["0108775015"]["text"] == (
        "prod_name: Strap top | detail_desc: Jersey top with narrow straps, a classic."
    )
    assert items["0108775044"]["text"] == "prod_name: Strap top (1)"
    assert dataset.category_names == ["Bra", "Vest top"] and items["0110065001"]["category"] == "Bra"
    assert dataset.metadata["dropped"] == {"missing_images": 2, "unreadable_images": 0}
    c1 = dataset.users.column("raw_id").to_pylist().index("c1")
    train = dataset.split("train")
    assert list(train.times[train.indptr[c1] : train.indptr[c1 + 1]]) == [1537401600]  # 2018-09-20, in seconds
    assert list(dataset.split("test").row(c1)) == [2]  # same day: the later row is the later purchase


def test_hm_start_date_keeps_only_recent_transactions(tmp_path):
    dataset = _prepare(HMOptions(path=str(_hm_folder(tmp_path)), start_date="2018-09-21"), tmp_path)
    assert dataset.users.column("raw_id").to_pylist() == ["c2"]
    assert sum(dataset.metadata["counts"]["interactions"].values()) == 2
    with pytest.raises(ConfigurationError, match="--start_date 'soon' is not a date"):
        SOURCES["hm"][1](HMOptions(path=str(_hm_folder(tmp_path)), start_date="soon"))


# --- table ----------------------------------------------------------------------------------------------------


def _table_files(tmp_path: Path) -> tuple[Path, Path]:
    interactions = _write(
        tmp_path / "clicks.csv",
        "customer,sku,date,stars\n"
        + "".join(f"u{u},s{s},2024-01-{d:02d},{3 + s % 3}\n" for u in range(4) for d, s in enumerate(range(5), 1)),
    )
    _jpeg(tmp_path / "pictures" / "s0.jpg")
    items = _write(
        tmp_path / "products.csv",
        "sku,title,overview,department,picture\n"
        + "".join(f"s{s},Item {s},<em>Nice</em> &amp; cheap,dept{s % 2},s{s}.jpg\n" for s in range(5)),
    )
    return interactions, items


def test_table_through_the_prepare_command(tmp_path, capsys):
    interactions, items = _table_files(tmp_path)
    output = tmp_path / "prepared"
    prepare(
        [
            *("--source", "table", "--output", str(output), "--interactions", str(interactions)),
            *("--user_column", "customer", "--item_column", "sku", "--timestamp_column", "date"),
            *("--rating_column", "stars", "--items", str(items), "--text_columns", "title", "overview"),
            *("--category_column", "department", "--image_column", "picture"),
            *("--image_root", str(tmp_path / "pictures"), "--split", "temporal", "--split_ratios", "[0.6, 0.2, 0.2]"),
        ]
    )
    assert "users 4  items 5" in capsys.readouterr().out
    dataset = PreparedDataset(output)
    items = _items(dataset)
    assert items["s3"]["text"] == "title: Item 3 | overview: Nice & cheap"
    assert items["s3"]["category"] == "dept1" and dataset.category_names == ["dept0", "dept1"]
    assert items["s0"]["image"] is not None and dataset.metadata["dropped"]["missing_images"] == 4
    assert dataset.metadata["source_options"]["text_columns"] == ["title", "overview"]
    assert dataset.metadata["split"]["method"] == "temporal"
    assert dataset.metadata["counts"]["interactions"] == {"train": 12, "valid": 4, "test": 4}
    test = dataset.split("test")
    assert set(test.times.tolist()) == {1704412800}  # 2024-01-05 in seconds


def test_list_options_take_space_separated_values_or_one_list():
    from mmrec_lightning.data.prepare import as_typed_lists

    lists = {"--text_columns", "--split_ratios"}
    typed = ["--text_columns", "title", "plot overview", "--split_ratios", "[0.8, 0.1, 0.1]", "--items", "a.csv"]
    assert as_typed_lists(typed, lists) == [
        *("--text_columns", '["title", "plot overview"]', "--split_ratios", "[0.8, 0.1, 0.1]", "--items", "a.csv")
    ]
    assert as_typed_lists(["--text_columns", "title"], lists) == ["--text_columns", '["title"]']


def test_a_prepared_dataset_is_as_readable_as_the_umask_says(tmp_path):
    interactions, items = _table_files(tmp_path)
    previous = os.umask(0o027)
    try:
        prepare(["--source", "table", "--output", str(tmp_path / "prepared"), "--interactions", str(interactions),
                 "--user_column", "customer", "--item_column", "sku"])  # fmt: skip
    finally:
        os.umask(previous)
    assert (tmp_path / "prepared").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "prepared" / "metadata.json").stat().st_mode & 0o777 == 0o640


def test_table_features_follow_the_rows_of_the_item_file(tmp_path):
    interactions, items = _table_files(tmp_path)
    shuffled = items.read_text().splitlines()
    items.write_text("\n".join([shuffled[0], *shuffled[:0:-1]]) + "\n")  # s4, s3, ..., s0
    np.save(tmp_path / "text.npy", np.array([[4.0], [3.0], [2.0], [1.0], [0.0]], np.float32))
    options = TableOptions(interactions=str(interactions), items=str(items), user_column="customer",
                           item_column="sku", text_features=str(tmp_path / "text.npy"))  # fmt: skip
    dataset = _prepare(options, tmp_path)
    matrix = read_features(feature_file(dataset.path, "text"))
    raw_ids = dataset.items.column("raw_id").to_pylist()
    assert {raw: float(row[0]) for raw, row in zip(raw_ids, matrix, strict=True)} == {f"s{i}": i for i in range(5)}
    too_many = dataclasses.replace(options, text_features=None, image_features=str(tmp_path / "x.npy"))
    np.save(tmp_path / "x.npy", np.zeros((6, 1), np.float32))
    with pytest.raises(ConfigurationError, match=r"--image_features .*x.npy: float32 \[6, 1\], expected a \[5, d\]"):
        SOURCES["table"][1](too_many)


def test_image_paths_outside_the_image_folder_are_refused_and_never_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the folders named relative to the working directory, as people type them
    interactions, items = _table_files(Path("."))
    pictures = tmp_path / "pictures"
    secret = _jpeg(tmp_path / "secret" / "s.jpg", "blue")
    (pictures / "sub").mkdir()
    (pictures / "link.jpg").symlink_to(secret)  # a file link pointing out
    (pictures / "sub" / "out").symlink_to(secret.parent, target_is_directory=True)  # a folder link pointing out
    names = ["s0.jpg", "../secret/s.jpg", str(secret), "link.jpg", "sub/out/s.jpg"]
    lines = items.read_text().splitlines()
    rows = [f"{line.rsplit(',', 1)[0]},{name}" for line, name in zip(lines[1:], names, strict=True)]
    items.write_text("\n".join([lines[0], *rows]) + "\n")
    options = TableOptions(interactions=str(interactions), items=str(items), user_column="customer",
                           item_column="sku", image_column="picture", image_root="pictures")  # fmt: skip
    dataset = _prepare(options, tmp_path)
    assert dataset.metadata["dropped"]["images_outside_root"] == 4
    images = {raw: row["image"] for raw, row in _items(dataset).items()}
    assert images["s0"] is not None and [images[f"s{i}"] for i in range(1, 5)] == [None] * 4
    secret_bytes = secret.read_bytes()
    assert not any(secret_bytes in path.read_bytes() for path in dataset.path.rglob("*") if path.is_file())


def test_table_parquet_with_image_bytes_and_no_timestamps(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "green").save(buffer, format="PNG")
    pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": [2, 1, 2]}).to_parquet(tmp_path / "events.parquet")
    items = pd.DataFrame({"item_id": [1, 2], "name": ["One", None], "png": [buffer.getvalue(), None]})
    items.to_parquet(tmp_path / "items.parquet")
    options = TableOptions(
        interactions=str(tmp_path / "events.parquet"),
        items=str(tmp_path / "items.parquet"),
        text_columns=["name"],
        image_column="png",
        split="loo",
    )
    dataset = _prepare(options, tmp_path)
    items = _items(dataset)
    assert items["1"]["text"] == "One" and items["2"]["text"] is None
    assert items["1"]["image"] == buffer.getvalue() and items["2"]["image"] is None
    assert dataset.metadata["timestamps"].startswith("row order")
    a = dataset.users.column("raw_id").to_pylist().index("a")
    assert list(dataset.split("train").row(a)) == [1] and list(dataset.split("test").row(a)) == [0]  # file order


@pytest.mark.parametrize("labels", [("train", "valid", "test"), ("0", "1", "2")])
def test_table_keeps_its_own_split_column(tmp_path, labels):
    rows = [("a", 1, labels[0]), ("a", 2, labels[0]), ("a", 3, labels[2]), ("b", 1, labels[1]), ("b", 3, labels[0])]
    lines = "".join(f"{user},{item},{split}\n" for user, item, split in rows)
    events = _write(tmp_path / "events.csv", "user_id,item_id,part\n" + lines)
    dataset = _prepare(TableOptions(interactions=str(events), split_column="part", split="source"), tmp_path)
    assert dataset.metadata["split"] == {"method": "source", "cold_items": 0}  # no seed or ratios of ours
    assert dataset.metadata["counts"]["interactions"] == {"train": 3, "valid": 1, "test": 1}
    a, b = (dataset.users.column("raw_id").to_pylist().index(user) for user in "ab")
    assert list(dataset.split("test").row(a)) == [2] and list(dataset.split("valid").row(b)) == [0]


def test_designated_cold_items_are_recorded_and_evaluated_as_the_cold_group(tmp_path):
    from mmrec_lightning.datamodule import RecDataModule

    rows = [("a", 1, "train"), ("a", 2, "train"), ("b", 1, "train"), ("b", 2, "train"), ("c", 2, "train")]
    rows += [("a", 3, "test"), ("b", 4, "valid"), ("b", 3, "test"), ("c", 4, "test"), ("c", 1, "valid")]
    events = _write(tmp_path / "events.csv", "user_id,item_id,part\n" + "".join(f"{u},{i},{p}\n" for u, i, p in rows))
    designated = _write(tmp_path / "cold.csv", "item_id\n3\n")  # 4 occurs outside training too, by chance
    options = TableOptions(interactions=str(events), split_column="part", split="source", cold_items=str(designated))
    dataset = _prepare(options, tmp_path)
    item_ids = dataset.items.column("raw_id").to_pylist()
    assert dataset.metadata["split"]["designated_cold_items"] == [item_ids.index("3")]
    assert dataset.metadata["split"]["cold_items"] == 2  # both lack training interactions
    data = RecDataModule(path=str(dataset.path), history_length=2)
    data.setup("test")
    assert [item_ids[i] for i in np.flatnonzero(data.facts.cold_items)] == ["3"]
    unknown = _write(tmp_path / "unknown.csv", "item_id\n3\n9\n")
    with pytest.raises(ConfigurationError, match=r"unknown.csv line 3: item '9' is not in the catalogue"):
        _prepare(dataclasses.replace(options, cold_items=str(unknown)), tmp_path / "again")
    with pytest.raises(ConfigurationError, match="--cold_items names the cold items of a split of your own"):
        TableOptions(interactions=str(events), split="random", cold_items=str(designated))


def test_the_cold_split_records_the_items_it_chose(tmp_path):
    interactions, _ = _table_files(tmp_path)
    options = TableOptions(interactions=str(interactions), user_column="customer", item_column="sku", split="cold",
                           cold_item_fraction=0.4)  # fmt: skip
    dataset = _prepare(options, tmp_path)
    chosen = dataset.metadata["split"]["designated_cold_items"]
    assert len(chosen) == dataset.metadata["split"]["cold_items_chosen"] == 2
    train_items = set(dataset.split("train").items.tolist())
    assert not set(chosen) & train_items


def test_a_bad_split_label_names_the_file_and_the_interaction(tmp_path):
    events = _write(tmp_path / "events.csv", "user_id,item_id,part\na,1,train\na,2,holdout\n")
    with pytest.raises(ConfigurationError, match=r"events.csv, interaction 2: split 'holdout' is not train, valid"):
        _prepare(TableOptions(interactions=str(events), split_column="part"), tmp_path)


def test_table_input_errors_are_named(tmp_path):
    interactions, items = _table_files(tmp_path)
    read = SOURCES["table"][1]
    mapped = {"user_column": "customer", "item_column": "sku"}
    semicolons = _write(tmp_path / "semi.csv", "customer;sku\nu1;s1\n")
    with pytest.raises(ConfigurationError, match=r"semi.csv: read as the single column 'customer;sku' with delimiter"):
        read(TableOptions(interactions=str(semicolons), **mapped))
    with pytest.raises(
        ConfigurationError, match=r"missing column\(s\) \['when'\]; expected \['customer', 'sku', 'when'\]"
    ):
        read(TableOptions(interactions=str(interactions), timestamp_column="when", **mapped))
    bad_rating = _write(tmp_path / "bad.csv", "customer,sku,stars\nu1,s1,4\nu1,s2,five\n")
    with pytest.raises(ConfigurationError, match="bad.csv line 3: stars 'five' is not a number"):
        read(TableOptions(interactions=str(bad_rating), rating_column="stars", **mapped))
    bad_date = _write(tmp_path / "dates.csv", "customer,sku,date\nu1,s1,2024-01-01\nu1,s2,yesterday\n")
    with pytest.raises(ConfigurationError, match="dates.csv line 3: date 'yesterday' is neither"):
        read(TableOptions(interactions=str(bad_date), timestamp_column="date", **mapped))
    empty_id = _write(tmp_path / "empty.csv", "customer,sku\nu1,s1\n,s2\n")
    with pytest.raises(ConfigurationError, match="empty.csv line 3: empty customer"):
        read(TableOptions(interactions=str(empty_id), **mapped))
    with pytest.raises(ConfigurationError, match="missing.csv: file not found"):
        read(TableOptions(interactions=str(tmp_path / "missing.csv"), **mapped))
    with pytest.raises(ConfigurationError, match="--text_columns describe items: give the item file"):
        TableOptions(interactions=str(interactions), text_columns=["title"])
    header_only = _write(tmp_path / "header.csv", "customer,sku\n")
    with pytest.raises(ConfigurationError, match=r"header.csv: no interactions \(only a header\?\)"):
        read(TableOptions(interactions=str(header_only), **mapped))
    no_items = _write(tmp_path / "no_items.csv", "sku,title\n")
    with pytest.raises(ConfigurationError, match=r"no_items.csv: no items \(only a header\?\)"):
        read(TableOptions(interactions=str(interactions), items=str(no_items), text_columns=["title"], **mapped))


def test_a_modality_that_cannot_be_used_stops_prepare(tmp_path):
    interactions, items = _table_files(tmp_path)  # one image of five exists
    table = {"interactions": str(interactions), "items": str(items), "user_column": "customer", "item_column": "sku"}
    read = SOURCES["table"][1]
    with pytest.raises(ConfigurationError, match=r"products.csv: 4 of the 5 images cannot be used \(80%\)"):
        read(TableOptions(**table, image_column="picture", image_root=str(tmp_path / "pictures"),
                          max_unusable_fraction=0.5))  # fmt: skip
    assert read(TableOptions(**table, image_column="picture", image_root=str(tmp_path / "pictures")))
    (tmp_path / "pictures" / "s0.jpg").unlink()
    with pytest.raises(ConfigurationError, match=r"products.csv: 5 of the 5 images cannot be used \(100%\); check"):
        read(TableOptions(**table, image_column="picture", image_root=str(tmp_path / "pictures")))
    blank = _write(tmp_path / "blank.csv", "sku,note\n" + "".join(f"s{i},  \n" for i in range(5)))
    with pytest.raises(ConfigurationError, match=r"blank.csv: 5 of the 5 texts cannot be used"):
        read(TableOptions(**{**table, "items": str(blank)}, text_columns=["note"]))


def test_text_files_are_utf8_with_or_without_a_bom_and_others_take_an_encoding(tmp_path):
    interactions = _write(tmp_path / "bom.csv", "\ufeffcustomer,sku\nu1,s1\nu2,s2\n", encoding="utf-8")
    options = {"user_column": "customer", "item_column": "sku"}
    assert SOURCES["table"][1](TableOptions(interactions=str(interactions), **options))  # the BOM is no column name
    latin = _write(tmp_path / "latin.csv", "customer,sku\nJosé,s1\nu2,s2\n", encoding="latin-1")
    with pytest.raises(ConfigurationError, match=r"latin.csv: not utf-8-sig text .*give its encoding with --encoding"):
        SOURCES["table"][1](TableOptions(interactions=str(latin), **options))
    data = SOURCES["table"][1](TableOptions(interactions=str(latin), encoding="latin-1", **options))
    assert "José" in set(data.users.column("raw_id").to_pylist())


def test_a_timestamp_column_may_mix_epoch_seconds_and_iso_dates(tmp_path):
    from mmrec_lightning.data.sources.readers import FileRows, to_seconds

    column = pd.Series(["1704067200", "2024-01-02", "2024-01-03T00:00:10Z", "1704326400.0"], dtype=object)
    seconds = to_seconds(column, "when", FileRows(tmp_path / "t.csv", 2))
    assert seconds.tolist() == [1704067200, 1704153600, 1704240010, 1704326400]
    with pytest.raises(ConfigurationError, match=r"t.csv line 3: when 'soon' is neither .* \(1 such rows\)"):
        to_seconds(pd.Series(["1704067200", "soon"], dtype=object), "when", FileRows(tmp_path / "t.csv", 2))


@pytest.mark.parametrize("spelling", ["inf", "-Infinity", "INF"])
@pytest.mark.parametrize("column", ["stars", "when"])
def test_an_infinite_rating_or_timestamp_is_an_error_naming_file_line_and_column(tmp_path, spelling, column):
    good = {"stars": "4", "when": "1700000000"}
    rows = [good, {**good, column: spelling}]
    path = _write(tmp_path / "inf.csv", "customer,sku,stars,when\n" + "".join(
        f"u1,s{i},{row['stars']},{row['when']}\n" for i, row in enumerate(rows)))  # fmt: skip
    options = TableOptions(interactions=str(path), user_column="customer", item_column="sku",
                           rating_column="stars", timestamp_column="when")  # fmt: skip
    with pytest.raises(ConfigurationError, match=rf"inf.csv line 3: {column} '{spelling}' is not a finite number"):
        SOURCES["table"][1](options)


@pytest.mark.parametrize("source", ["mmrec", "movielens", "amazon", "hm", "table"])
def test_every_source_lists_its_own_and_the_common_options(source, capsys):
    with pytest.raises(SystemExit) as exit_info:
        prepare(["--source", source, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    own = {"mmrec": "--name", "movielens": "--items_csv", "amazon": "--reviews", "hm": "--start_date"}
    assert own.get(source, "--image_root") in text
    assert all(flag in text for flag in ("--k_core", "--min_rating", "--split {auto,source,random,loo,temporal,cold}"))


def test_a_configuration_error_from_prepare_is_one_line(tmp_path, monkeypatch, capsys):
    from mmrec_lightning.__main__ import main as entry_point

    arguments = ["--source", "movielens", "--output", str(tmp_path / "out"), "--path", str(tmp_path / "no")]
    monkeypatch.setattr("sys.argv", ["mmrec_lightning", "prepare", *arguments])
    with pytest.raises(SystemExit) as exit_info:
        entry_point()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'no'}: folder not found (--path)"
    assert not (tmp_path / "out").exists()


def test_prepare_imports_neither_torch_nor_lightning():
    import subprocess
    import sys

    code = (
        "import runpy, sys\n"
        "sys.argv = ['mmrec_lightning', 'prepare', '--help']\n"
        "try:\n    runpy.run_module('mmrec_lightning', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(sorted({'torch', 'lightning'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--source" in done.stdout  # the help was printed
    assert done.stdout.strip().splitlines()[-1] == "[]"  # each takes seconds and hundreds of MB to import


def test_nothing_in_the_data_package_imports_lightning():
    import subprocess
    import sys

    code = (
        "import importlib, pkgutil, sys, mmrec_lightning.data as data\n"
        "for module in pkgutil.walk_packages(data.__path__, 'mmrec_lightning.data.'):\n"
        "    importlib.import_module(module.name)\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'lightning'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
