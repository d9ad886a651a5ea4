"""retrieval.core.decode: draft mode, EXIF orientation, every mode to RGB, first frame, bomb limit, bad files."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.core.decode import Decoder, load_rgb, probe

from retrieval.core.errors import DecodeError
from retrieval.core.transforms import normalize_uint8

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def pixel(image: Image.Image, xy: tuple[int, int]) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=int)[xy[1], xy[0]]


def close(actual: np.ndarray, expected: tuple[int, int, int], tolerance: int = 30) -> bool:
    return bool(np.all(np.abs(actual - np.array(expected)) <= tolerance))


def test_decoder_returns_normalised_square_pixels_and_info() -> None:
    data = encode(Image.new("RGB", (60, 40), RED), "PNG")
    decoded = Decoder(32)(data)
    assert decoded.pixels.shape == (3, 32, 32) and decoded.pixels.dtype == torch.float32
    assert (decoded.info.width, decoded.info.height, decoded.info.format) == (60, 40, "PNG")
    assert probe(data) == decoded.info


def test_uint8_pixels_normalised_later_are_the_same_numbers() -> None:
    noise = Image.effect_noise((90, 70), 60).convert("RGB")  # every pixel different, and odd sides to crop
    data = encode(noise, "JPEG", quality=90)
    raw = Decoder(32, normalise=False)(data).pixels
    assert raw.shape == (3, 32, 32) and raw.dtype == torch.uint8
    later = normalize_uint8(torch.stack([raw, raw]).contiguous(memory_format=torch.channels_last))
    assert later.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(later[1], Decoder(32)(data).pixels)  # bit for bit


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 20, 20))  # stored: left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: the left edge becomes the top
    rgb, info = load_rgb(encode(image, "JPEG", exif=exif, quality=95))
    assert (info.width, info.height) == rgb.size == (20, 40)
    assert close(pixel(rgb, (10, 5)), RED) and close(pixel(rgb, (10, 35)), BLUE)


def test_palette_with_transparency_goes_over_white() -> None:
    image = Image.new("P", (20, 20), 0)
    image.putpalette([0, 0, 0, *RED] + [0] * 762)
    image.paste(1, (0, 0, 10, 20))  # left half red, right half palette index 0 = transparent black
    rgb, _ = load_rgb(encode(image, "PNG", transparency=0))
    assert rgb.mode == "RGB"
    assert close(pixel(rgb, (5, 5)), RED) and close(pixel(rgb, (15, 5)), WHITE, 0)


def test_rgba_alpha_goes_over_white() -> None:
    image = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    image.paste((*BLUE, 255), (0, 0, 10, 20))
    rgb, _ = load_rgb(encode(image, "WEBP", lossless=True))
    assert close(pixel(rgb, (5, 5)), BLUE, 2) and close(pixel(rgb, (15, 5)), WHITE, 0)


def test_cmyk_jpeg_becomes_rgb() -> None:
    rgb, info = load_rgb(encode(Image.new("CMYK", (24, 24), (0, 255, 255, 0)), "JPEG", quality=95))  # red ink
    assert rgb.mode == "RGB" and info.format == "JPEG"
    assert close(pixel(rgb, (12, 12)), RED, 40)


def test_16_bit_grey_is_scaled_not_clipped() -> None:
    half = np.full((16, 16), 32768, dtype=np.uint16)
    rgb, _ = load_rgb(encode(Image.fromarray(half), "PNG"))
    assert close(pixel(rgb, (3, 3)), (128, 128, 128), 2)


@pytest.mark.parametrize("mode", ["L", "1", "LA", "I", "F"])
def test_other_modes_become_rgb(mode: str) -> None:
    fmt = "TIFF" if mode in ("I", "F") else "PNG"
    rgb, _ = load_rgb(encode(Image.new(mode, (8, 8), 1 if mode in ("1", "I", "F") else 200), fmt))
    assert rgb.mode == "RGB" and rgb.size == (8, 8)


def test_first_frame_of_an_animation() -> None:
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    rgb, info = load_rgb(data)
    assert info.format == "GIF" and close(pixel(rgb, (8, 8)), RED, 10)


def test_jpeg_draft_mode_decodes_big_images_small_but_not_below_the_model_side() -> None:
    data = encode(Image.new("RGB", (1600, 1200), RED), "JPEG")
    rgb, info = load_rgb(data, min_side=32)
    assert (info.width, info.height) == (1600, 1200)  # the info describes the file, not the reduced decode
    assert 32 <= min(rgb.size) < 128
    assert min(load_rgb(data)[0].size) == 1200


def test_big_png_is_box_reduced_before_the_resize() -> None:
    rgb, _ = load_rgb(encode(Image.new("RGB", (400, 300), RED), "PNG"), min_side=32)
    assert 64 <= min(rgb.size) < 128  # box-reduced to within 2-4x; the resize filter does the rest


def test_decompression_bomb_limit() -> None:
    data = encode(Image.new("RGB", (100, 100), RED), "PNG")
    with pytest.raises(DecodeError, match="decompression bomb"):
        load_rgb(data, max_pixels=5000)
    assert load_rgb(data, max_pixels=10_000)[0].size == (100, 100)


def test_bad_files_raise_decode_error_with_a_reason(tmp_path) -> None:
    with pytest.raises(DecodeError, match="not a supported image"):
        Decoder(32)(b"this is not an image at all")
    truncated = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")[:300]
    with pytest.raises(DecodeError, match="corrupt or truncated"):
        Decoder(32)(truncated)
    path = tmp_path / "ok.png"
    Image.new("RGB", (10, 10), RED).save(path)
    assert Decoder(32)(path).info.format == "PNG"  # a path works as well as bytes
