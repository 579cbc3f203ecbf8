"""Content encoders: what turns an item's image (timm) or text (Hugging Face) into a vector, trained, partly
trained or frozen, with their pretrained weights from the hub, a local path or an installed package."""

from mmrec_lightning.encoders.base import FreezableEncoder, ImageEncoder, TextEncoder
from mmrec_lightning.encoders.image import TimmImageEncoder
from mmrec_lightning.encoders.text import HFTextEncoder

__all__ = ["FreezableEncoder", "HFTextEncoder", "ImageEncoder", "TextEncoder", "TimmImageEncoder"]
