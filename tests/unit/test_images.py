import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import decode_jpeg

from pipeline.data.images import BadImage, prepare_image


def encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def colour_image(size=(120, 80), colour=(200, 30, 40)) -> Image.Image:
    rng = np.random.default_rng(0)
    pixels = np.clip(np.array(colour) + rng.normal(0, 5, (*size[::-1], 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def decoded(data: bytes) -> torch.Tensor:
    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))


def test_baseline_rgb_jpeg_is_kept_byte_for_byte():
    data = encode(colour_image(), quality=85)
    prepared = prepare_image(data, max_side=500, quality=90)
    assert prepared.action == "kept"
    assert prepared.data == data


def test_cmyk_jpeg_becomes_rgb_with_the_same_colours():
    data = encode(colour_image().convert("CMYK"))
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    prepared = prepare_image(data, max_side=500, quality=90)
    assert prepared.action == "re-encoded: CMYK JPEG"
    out = Image.open(io.BytesIO(prepared.data))
    assert out.mode == "RGB"
    mean = np.asarray(out).reshape(-1, 3).mean(0)
    assert np.allclose(mean, (200, 30, 40), atol=12), mean


def test_grayscale_jpeg_becomes_three_channel():
    data = encode(colour_image().convert("L"))
    prepared = prepare_image(data, max_side=500, quality=90)
    assert prepared.action == "re-encoded: grayscale JPEG"
    assert decoded(prepared.data).shape == (3, 80, 120)


def test_png_named_jpeg_is_converted():
    prepared = prepare_image(encode(colour_image(), "PNG"), max_side=500, quality=90)
    assert prepared.action == "re-encoded: PNG file"
    assert Image.open(io.BytesIO(prepared.data)).format == "JPEG"


def test_transparent_palette_png_is_composited_on_white():
    image = Image.new("P", (40, 30), 0)
    image.putpalette([0, 0, 0] * 256)
    image.info["transparency"] = 0
    prepared = prepare_image(encode(image, "PNG", transparency=0), max_side=500, quality=95)
    mean = np.asarray(Image.open(io.BytesIO(prepared.data))).mean()
    assert mean > 240  # white, not the black the palette holds


def test_progressive_jpeg_is_rewritten_as_baseline():
    data = encode(colour_image(), progressive=True)
    prepared = prepare_image(data, max_side=500, quality=90)
    assert prepared.action == "re-encoded: progressive JPEG"
    assert not Image.open(io.BytesIO(prepared.data)).info.get("progressive")


def test_large_image_is_downscaled_to_max_side_keeping_aspect():
    data = encode(colour_image(size=(1000, 400)))
    prepared = prepare_image(data, max_side=250, quality=90)
    assert (prepared.width, prepared.height) == (250, 100)
    assert prepared.action == "re-encoded: downscaled"
    assert prepared.detail == "longer side 1000 > max_side 250"
    assert decoded(prepared.data).shape == (3, 100, 250)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file: 0 bytes"),
        (b"this is a text file, not a picture\n", "not an image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 20, "image"),
    ],
    ids=["zero-bytes", "text", "garbage-header"],
)
def test_undecodable_bytes_raise_with_a_reason(data, reason):
    with pytest.raises(BadImage, match=reason):
        prepare_image(data, max_side=500, quality=90)


def test_truncated_jpeg_is_rejected_even_when_it_would_be_kept():
    data = encode(colour_image(size=(200, 200)))
    with pytest.raises(BadImage, match="JPEG does not decode: image file is truncated"):
        prepare_image(data[: len(data) // 2], max_side=500, quality=90)


def test_truncated_jpeg_that_needs_conversion_is_rejected():
    data = encode(colour_image(size=(200, 200)).convert("CMYK"))
    with pytest.raises(BadImage, match="cannot decode JPEG"):
        prepare_image(data[: len(data) // 2], max_side=500, quality=90)
