"""A synthetic multimodal catalogue whose preferences can only be learned from both modalities.

Every item has latent attributes. Its image shows its shape (= its category), colour and pattern; its
text names its category, material and style. Colour and pattern are visible only in the image, material
and style only in the text, the category in both. Each user likes one colour, one material and one
category; interactions are drawn from those preferences with a popularity skew, and timestamped. A
fraction of items is "cold": their interactions are all in validation/test, never in training, so only
their image and text can place them. Everything is a deterministic function of the seed.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
from PIL import Image, ImageChops, ImageDraw

from mmrec_lightning.data.schema import ITEMS_SCHEMA
from mmrec_lightning.data.sources.base import SourceData
from mmrec_lightning.data.sources.splits import cold_item_split
from mmrec_lightning.errors import ConfigurationError

CATEGORIES = ("lamp", "vase", "chair", "bag", "shoe", "clock")
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")  # category i is drawn as shape i
COLOURS = {
    "red": (214, 39, 40),
    "blue": (31, 119, 180),
    "green": (44, 160, 44),
    "orange": (255, 127, 14),
    "purple": (148, 103, 189),
    "yellow": (230, 200, 30),
    "black": (30, 30, 30),
    "pink": (240, 120, 190),
}
PATTERNS = ("plain", "stripes", "dots", "checks")
MATERIALS = ("wooden", "metal", "leather", "cotton", "glass", "ceramic")
STYLES = ("vintage", "modern", "rustic", "minimal", "bohemian")
TEMPLATES = (
    "A {style} {material} {category}.",
    "{style} {category} made of {material_noun}, {filler}.",
    "This {material} {category} has a {style} look. {filler}.",
    "{filler}: {style} {material} {category}",
)
MATERIAL_NOUNS = dict(zip(MATERIALS, ("wood", "metal", "leather", "cotton", "glass", "ceramic"), strict=True))
FILLERS = ("great gift", "ships fast", "limited edition", "best seller", "easy care", "new arrival")
SECONDS_PER_DAY = 86_400
SPLIT_RATIOS = (0.8, 0.1, 0.1)


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the synthetic multimodal dataset.

    Args:
        users: number of users.
        items: number of items.
        seed: random seed; the dataset is a deterministic function of all fields.
        interactions_per_user: mean number of interactions per user (at least 5 each).
        cold_item_fraction: fraction of items whose interactions all go to validation/test.
        image_size: side of the square item images, in pixels.
        missing_image_fraction: fraction of items without an image.
        missing_text_fraction: fraction of items without text.
        popularity_skew: weight of the item popularity term against the user's preferences.
    """

    users: int = 1000
    items: int = 500
    seed: int = 0
    interactions_per_user: float = 20.0
    cold_item_fraction: float = 0.1
    image_size: int = 64
    missing_image_fraction: float = 0.02
    missing_text_fraction: float = 0.02
    popularity_skew: float = 1.0

    def __post_init__(self) -> None:
        if self.users < 1 or self.items < 10:
            raise ConfigurationError(f"synthetic data needs users >= 1 and items >= 10, got {self.users}, {self.items}")
        for name in ("cold_item_fraction", "missing_image_fraction", "missing_text_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigurationError(f"synthetic {name} must be in [0, 1), got {getattr(self, name)}")


def draw_image(shape: str, colour: tuple[int, int, int], pattern: str, size: int, rng: np.random.Generator) -> bytes:
    """Render one item image as JPEG bytes: a coloured, patterned shape on a noisy light background."""
    side = size * 4  # draw large and downsample, for anti-aliased edges
    shape_mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(shape_mask)
    radius = side * rng.uniform(0.28, 0.38)
    cx, cy = side * (0.5 + rng.uniform(-0.08, 0.08)), side * (0.5 + rng.uniform(-0.08, 0.08))
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
    elif shape == "square":
        draw.rectangle([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
    elif shape == "cross":
        arm = radius / 3
        draw.rectangle([cx - radius, cy - arm, cx + radius, cy + arm], fill=255)
        draw.rectangle([cx - arm, cy - radius, cx + arm, cy + radius], fill=255)
    else:
        corners = {"triangle": 3, "diamond": 4, "star": 10}[shape]
        angles = np.linspace(0, 2 * np.pi, corners, endpoint=False) - np.pi / 2
        radii = np.where(np.arange(corners) % 2, radius * 0.45, radius) if shape == "star" else radius
        draw.polygon(list(zip(cx + radii * np.cos(angles), cy + radii * np.sin(angles), strict=True)), fill=255)

    image = Image.new("RGB", (side, side), tuple(int(v) for v in rng.integers(215, 245, size=3)))
    image.paste(colour, mask=shape_mask)
    if pattern != "plain":
        pattern_mask = Image.new("L", (side, side), 0)
        pdraw = ImageDraw.Draw(pattern_mask)
        step = side // 8
        for x in range(0, side, step):
            if pattern == "stripes":
                pdraw.rectangle([x, 0, x + step // 3, side], fill=255)
                continue
            for y in range(0, side, step):
                if pattern == "checks" and (x // step + y // step) % 2:
                    pdraw.rectangle([x, y, x + step - 1, y + step - 1], fill=255)
                elif pattern == "dots":
                    pdraw.ellipse([x + step // 4, y + step // 4, x + 3 * step // 4, y + 3 * step // 4], fill=255)
        darker = tuple(int(c * 0.55) for c in colour)
        image.paste(darker, mask=ImageChops.multiply(pattern_mask, shape_mask))
    image = image.resize((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_text(category: str, material: str, style: str, rng: np.random.Generator) -> str:
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    text = template.format(
        style=style,
        material=material,
        material_noun=MATERIAL_NOUNS[material],
        category=category,
        filler=FILLERS[rng.integers(len(FILLERS))],
    )
    return text[0].upper() + text[1:]


def generate(spec: SyntheticSpec) -> SourceData:
    """Generate the dataset described by ``spec`` (images are rendered lazily, batch by batch)."""
    rng = np.random.default_rng(spec.seed)
    n_items, n_users = spec.items, spec.users
    category = rng.integers(len(CATEGORIES), size=n_items)
    colour = rng.integers(len(COLOURS), size=n_items)
    pattern = rng.integers(len(PATTERNS), size=n_items)
    material = rng.integers(len(MATERIALS), size=n_items)
    style = rng.integers(len(STYLES), size=n_items)
    quality = rng.normal(size=n_items)

    likes_colour = rng.integers(len(COLOURS), size=n_users)
    likes_material = rng.integers(len(MATERIALS), size=n_users)
    likes_category = rng.integers(len(CATEGORIES), size=n_users)
    utility = (
        2.0 * (colour[None, :] == likes_colour[:, None])
        + 2.0 * (material[None, :] == likes_material[:, None])
        + 1.5 * (category[None, :] == likes_category[:, None])
        + spec.popularity_skew * quality[None, :]
    )

    cold = np.zeros(n_items, dtype=bool)
    cold[rng.choice(n_items, size=int(round(spec.cold_item_fraction * n_items)), replace=False)] = True

    users, items, times = [], [], []
    for u in range(n_users):
        n = int(min(n_items // 2, 5 + rng.poisson(max(spec.interactions_per_user - 5, 0))))
        weights = np.exp(utility[u] - utility[u].max())
        chosen = rng.choice(n_items, size=n, replace=False, p=weights / weights.sum())
        start = rng.integers(0, 365 * SECONDS_PER_DAY)
        stamps = start + np.cumsum(rng.exponential(3 * SECONDS_PER_DAY, size=n)).astype(np.int64)
        users.append(np.full(n, u))
        items.append(chosen)
        times.append(stamps)
    interaction_users, interaction_items = np.concatenate(users), np.concatenate(items)

    interactions = pa.table(
        {
            "user": interaction_users.astype(np.int32),
            "item": interaction_items.astype(np.int32),
            "timestamp": np.concatenate(times),
            "rating": pa.nulls(len(interaction_users), pa.float32()),
            "split": cold_item_split(interaction_users, cold[interaction_items], SPLIT_RATIOS, rng),
        }
    )
    has_image = rng.random(n_items) >= spec.missing_image_fraction
    has_text = rng.random(n_items) >= spec.missing_text_fraction
    item_seeds = rng.integers(2**63 - 1, size=n_items)

    def item_batches(batch_size: int = 256) -> Iterator[pa.RecordBatch]:
        colour_values = list(COLOURS.values())
        for lo in range(0, n_items, batch_size):
            idx = np.arange(lo, min(lo + batch_size, n_items))
            images, texts = [], []
            for i in idx:
                item_rng = np.random.default_rng(item_seeds[i])
                images.append(
                    draw_image(
                        SHAPES[category[i]], colour_values[colour[i]], PATTERNS[pattern[i]], spec.image_size, item_rng
                    )
                    if has_image[i]
                    else None
                )
                texts.append(
                    write_text(CATEGORIES[category[i]], MATERIALS[material[i]], STYLES[style[i]], item_rng)
                    if has_text[i]
                    else None
                )
            yield pa.record_batch(
                [
                    pa.array(idx, pa.int32()),
                    pa.array([f"item{i}" for i in idx]),
                    pa.array(texts, pa.string()),
                    pa.array(category[idx], pa.int32()),
                    pa.array(images, pa.binary()),
                ],
                schema=ITEMS_SCHEMA,
            )

    metadata = {
        "source": "synthetic",
        "source_options": asdict(spec),
        "split": {
            "method": "per-user random 8:1:1 over warm items; cold items' interactions split between valid and test",
            "seed": spec.seed,
            "cold_items": int(cold.sum()),
        },
        "categories": list(CATEGORIES),
        "cold_items": np.flatnonzero(cold).tolist(),
    }
    user_table = pa.table({"user": np.arange(n_users, dtype=np.int32), "raw_id": [f"user{u}" for u in range(n_users)]})
    return SourceData(interactions=interactions, items=item_batches(), users=user_table, metadata=metadata)
