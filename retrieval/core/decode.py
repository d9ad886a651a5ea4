"""Decode one image file into the CNN's input: Pillow, JPEG draft mode, EXIF orientation, RGB, one frame.

The one decoder of the project: training, evaluation, indexing, search and the server all use it, so a
model is searched with exactly the pixels it was trained on (transparency over white, 16-bit scaled).

Safe to call from many threads at once: Pillow releases the GIL while it decodes and resizes, which is
why the pipeline decodes in a thread pool while the CNN runs.

    decoder = Decoder(image_size=224)
    decoded = decoder(path_or_bytes)   # decoded.pixels: [3, 224, 224], normalised
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from retrieval.core.errors import DecodeError

if TYPE_CHECKING:
    import torch

_ORIENTATION = 0x0112
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_DEEP_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}  # 16/32-bit grey and float



@dataclass
class ImageInfo:
    width: int  # as displayed: after EXIF orientation, before any reduction
    height: int
    format: str  # Pillow's name: JPEG, PNG, WEBP, GIF, BMP, TIFF


@dataclass
class Decoded:
    pixels: torch.Tensor  # [3, S, S] float normalised (uint8 with normalise=False), ready to stack into a batch
    info: ImageInfo


Source = bytes | str | os.PathLike


def _open(source: Source) -> Image.Image:
    try:
        return Image.open(io.BytesIO(source) if isinstance(source, bytes) else Path(source))
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"decompression bomb refused ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise DecodeError("not a supported image (unrecognised content)") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise DecodeError(f"corrupt or truncated image ({exc})") from exc


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_ORIENTATION, 1))
    except Exception:  # corrupt EXIF is common and harmless: show the pixels as stored
        return 1


def _info(image: Image.Image, orientation: int) -> ImageInfo:
    width, height = image.size
    if orientation in (5, 6, 7, 8):  # a quarter turn swaps the displayed sides
        width, height = height, width
    return ImageInfo(width, height, image.format or "")


def probe(source: Source) -> ImageInfo:
    """Size and format from the header alone (no pixels are decoded)."""
    with _open(source) as image:
        return _info(image, _orientation(image))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: transparency over white, 16-bit and float scaled (not clipped) to 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode in _DEEP_MODES:
        values = np.asarray(image, dtype=np.float32)
        peak = float(values.max()) if values.size else 0.0
        if image.mode.startswith("I;16") or (image.mode == "I" and peak > 255):
            scale = 255.0 / 65535.0
        elif image.mode == "F":
            scale = 255.0 / peak if peak > 0 else 1.0
        else:
            scale = 1.0
        grey = np.clip(values * scale + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def load_rgb(source: Source, min_side: int | None = None, max_pixels: int | None = None
             ) -> tuple[Image.Image, ImageInfo]:
    """Open, decode (the first frame only) and orient an image as RGB.

    ``min_side``: the smallest short side the caller needs; JPEGs are decoded at a reduced scale (draft
    mode) and big images box-reduced, never below it. ``max_pixels``: refuse to decode more pixels than
    this (default: Pillow's ``Image.MAX_IMAGE_PIXELS``), counted after draft mode.
    """
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    with _open(source) as image:
        orientation = _orientation(image)
        info = _info(image, orientation)
        try:
            if min_side:
                image.draft("RGB", (min_side, min_side))  # JPEG only: a 1/2, 1/4 or 1/8 scale decode
            if limit and image.size[0] * image.size[1] > limit:
                raise DecodeError(f"decompression bomb refused ({image.size[0]}x{image.size[1]} pixels, "
                                  f"limit {limit})")
            image.load()  # frame 0 of an animation
            rgb = to_rgb(image)
        except DecodeError:
            raise
        except Exception as exc:  # truncated or corrupt data: OSError, ValueError, SyntaxError, struct.error
            first_line = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
            raise DecodeError(f"corrupt or truncated image ({first_line})") from exc
        factor = min(rgb.size) // (2 * min_side) if min_side else 0
        if factor >= 2:  # a cheap box reduction first, so the resize filter works on at most 2x the target
            rgb = rgb.reduce(factor)
        if orientation in _TRANSPOSE:
            rgb = rgb.transpose(_TRANSPOSE[orientation])
        if rgb is image:  # closing the file would close the pixels too
            rgb = image.copy()
    return rgb, info


class Decoder:
    """Callable: file path or bytes -> :class:`Decoded` for a model with input side ``image_size``.

    ``normalise=False`` keeps the pixels uint8 (:func:`retrieval.core.transforms.prepare_batch` finishes them,
    batch by batch, as training, evaluation and :class:`indexer.embed.ImageEmbedder` do): decoding threads
    then run no torch arithmetic, which would start OpenMP threads of their own on cores the CNN is using,
    and images waiting for their batch take a quarter of the memory. ``mean``/``std``: the model's
    ``config.input_mean``/``input_std`` (ImageNet's by default), used when normalising here.
    """

    def __init__(self, image_size: int, max_pixels: int | None = None, normalise: bool = True,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        self.image_size = image_size
        self.max_pixels = max_pixels
        self.normalise = normalise
        self.mean, self.std = mean, std

    # built at the first image: the transforms import torch and torchvision, seconds that a run with nothing
    # to decode skips
    @cached_property
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL RGB image -> uint8 [3, S, S], or normalised float with ``normalise``."""
        from retrieval.core import transforms

        resize = transforms.eval_transform_uint8(self.image_size)
        if not self.normalise:
            return resize
        mean, std = self.mean or transforms.MEAN, self.std or transforms.STD
        return lambda rgb: transforms.normalize_uint8(resize(rgb)[None], mean, std)[0]

    def __call__(self, source: Source) -> Decoded:
        rgb, info = load_rgb(source, self.image_size, self.max_pixels)
        return Decoded(self.transform(rgb), info)  # [3, S, S]


def decode_pixels(source: Source, image_size: int) -> torch.Tensor:
    """One file -> uint8 [3, S, S], exactly as the indexer decodes it (training and evaluation use this)."""
    return Decoder(image_size, normalise=False)(source).pixels
