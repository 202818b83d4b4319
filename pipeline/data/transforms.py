"""Decoding and augmentation of one JPEG into a uint8 crop, and normalisation on the device.

Decoding is the hot spot (benchmarks/loader.py): a crop that is downscaled at least
2x is decoded with Pillow's JPEG draft mode (libjpeg-turbo DCT scaling: 1/2, 1/4, 1/8 of the
pixels); otherwise torchvision's libjpeg-turbo decoder, then one antialiased bilinear resize of
the crop in uint8. Augmentation randomness comes from (seed, epoch, sample index), not from
worker RNG state, so a resumed run sees exactly the crops and flips of an uninterrupted one.
Batches stay uint8 until they reach the device: 4x fewer bytes through the worker queue and the
host-to-device copy than float32.
"""

from __future__ import annotations

import io
import math
import random
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from pipeline.config import DataConfig

# What F.interpolate(mode="bilinear", antialias=True) runs, called with `out=`: ATen's op.
_resize_antialiased = torch.ops.aten._upsample_bilinear2d_aa.out

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Transform(Protocol):
    size: int

    def __call__(self, jpeg: memoryview, epoch: int, index: int, out: torch.Tensor) -> None:
        """Decode `jpeg`, crop and resize it into `out` (uint8, size x size x 3)."""


def jpeg_size(data: memoryview | bytes) -> tuple[int, int]:
    """(width, height) from the JPEG's SOF marker, without decoding."""
    view = memoryview(data)
    pos = 2
    while pos + 9 < len(view):
        if view[pos] != 0xFF:
            raise ValueError("corrupt JPEG: expected a marker")
        marker = view[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        length = (view[pos + 2] << 8) | view[pos + 3]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = (view[pos + 5] << 8) | view[pos + 6]
            width = (view[pos + 7] << 8) | view[pos + 8]
            return width, height
        pos += 2 + length
    raise ValueError("corrupt JPEG: no frame header")


def decode_resized_crop(
    jpeg: memoryview,
    image_size: tuple[int, int],
    box: tuple[int, int, int, int],
    out: torch.Tensor,
    flip: bool = False,
) -> None:
    """Decode the (top, left, height, width) `box` of a JPEG resized into `out` (H x W x 3)."""
    width, height = image_size
    top, left, box_h, box_w = box
    out_h, out_w = out.shape[0], out.shape[1]
    reduction = min(box_h / out_h, box_w / out_w)
    if reduction >= 2:
        image = Image.open(io.BytesIO(jpeg))
        image.draft("RGB", (math.ceil(width / reduction), math.ceil(height / reduction)))
        sx, sy = image.width / width, image.height / height
        crop = (left * sx, top * sy, (left + box_w) * sx, (top + box_h) * sy)
        resized = image.convert("RGB").resize((out_w, out_h), Image.Resampling.BILINEAR, box=crop)
        pixels = torch.from_numpy(np.asarray(resized))
        out.copy_(pixels.flip(1) if flip else pixels)
        return
    chw = decode_jpeg(torch.frombuffer(jpeg, dtype=torch.uint8), mode=ImageReadMode.RGB)
    region = chw[:, top : top + box_h, left : left + box_w].unsqueeze(0)
    if flip:  # mirroring the crop mirrors the resized image, pixel for pixel
        region = region.flip(3)
    region = region.contiguous(memory_format=torch.channels_last)  # the fast uint8 kernel
    # F.interpolate(bilinear, antialias) writing straight into `out`, whose H x W x 3 memory
    # is a channels-last 1 x 3 x H x W image: no resized copy to move into the batch after.
    _resize_antialiased(region, [out_h, out_w], False, None, None, out=out.permute(2, 0, 1)[None])


class TrainTransform:
    """RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3)) and a horizontal flip with
    probability 1/2, as torchvision's reference (same parameter sampling)."""

    @classmethod
    def from_config(cls, data: DataConfig, seed: int) -> TrainTransform:
        return cls(data.image_size, seed, scale=(data.crop_scale_min, 1.0), hflip=data.hflip)

    def __init__(
        self,
        size: int,
        seed: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
    ) -> None:
        self.size = size
        self.seed = seed
        self.hflip = hflip
        self.scale = scale
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.ratio = ratio

    def params(self, width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*self.log_ratio))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return rng.randint(0, height - h), rng.randint(0, width - w), h, w
        # Fallback: the largest central crop within the ratio range.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            h, w = height, round(height * self.ratio[1])
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, jpeg: memoryview, epoch: int, index: int, out: torch.Tensor) -> None:
        rng = random.Random(f"{self.seed}/{epoch}/{index}")
        width, height = jpeg_size(jpeg)
        box = self.params(width, height, rng)
        flip = rng.random() < 0.5  # drawn even without flips, so crops do not depend on it
        decode_resized_crop(jpeg, (width, height), box, out, flip=self.hflip and flip)


class ValTransform:
    """Resize the shorter side to `resize`, then center-crop `size` x `size`, with torchvision's
    rounding: resizing the whole image first (not a rounded box of it) keeps the crop where
    torchvision's Resize + CenterCrop put it, to the sub-pixel."""

    def __init__(self, size: int, resize: int) -> None:
        self.size = size
        self.resize = resize

    @classmethod
    def from_config(cls, data: DataConfig) -> ValTransform:
        return cls(data.image_size, data.val_resize)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        if width <= height:
            return self.resize, int(self.resize * height / width)
        return int(self.resize * width / height), self.resize

    def __call__(self, jpeg: memoryview, epoch: int, index: int, out: torch.Tensor) -> None:
        width, height = jpeg_size(jpeg)
        resized_w, resized_h = self.resized_size(width, height)
        top = round((resized_h - self.size) / 2)
        left = round((resized_w - self.size) / 2)
        if min(width, height) / self.resize >= 2:
            image = Image.open(io.BytesIO(jpeg))
            image.draft("RGB", (resized_w, resized_h))
            crop = (left, top, left + self.size, top + self.size)
            resized = (
                image.convert("RGB")
                .resize((resized_w, resized_h), Image.Resampling.BILINEAR)
                .crop(crop)
            )
            out.copy_(torch.from_numpy(np.asarray(resized)))
            return
        chw = decode_jpeg(torch.frombuffer(jpeg, dtype=torch.uint8), mode=ImageReadMode.RGB)
        full = chw.unsqueeze(0).contiguous(memory_format=torch.channels_last)
        resized = F.interpolate(
            full, size=(resized_h, resized_w), mode="bilinear", antialias=True, align_corners=False
        )
        out.copy_(resized[0, :, top : top + self.size, left : left + self.size].permute(1, 2, 0))


class Normalizer:
    """uint8 NCHW -> normalised float on the device, (x/255 - mean) / std, in the requested
    memory format, without temporaries."""

    def __init__(self, device: torch.device, channels_last: bool = False) -> None:
        self.device = device
        self.channels_last = channels_last
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(shape) * 255
        self.inv_std = 1 / (torch.tensor(IMAGENET_STD, device=device).view(shape) * 255)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"Normalizer takes uint8 images, got {images.dtype}")
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = images.to(self.device, non_blocking=True)  # uint8 over the bus: 4x fewer bytes
        # Cast and lay out in one pass, then normalise in place: no temporaries, where
        # `(x.float() - mean) * inv_std` and `.contiguous()` would make three.
        x = x.to(dtype=torch.float32, memory_format=fmt)
        return x.sub_(self.mean).mul_(self.inv_std)
