"""Robust decode and re-encode of source images for the shards.

ImageNet really holds CMYK JPEGs, grayscale JPEGs and a PNG named .JPEG. Everything that can be
read becomes a baseline RGB JPEG no larger than `max_side`; a file that is already one is kept
byte for byte (re-encoding it would only lose quality). A file that cannot be decoded raises
`BadImage` with the reason, which the shard stage writes to quarantine.csv.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from pipeline.errors import first_line

MODE_NAMES = {"L": "grayscale", "1": "bilevel", "CMYK": "CMYK", "YCbCr": "YCbCr"}


class BadImage(ValueError):
    """The bytes are not a decodable image; the message is the reason, `kind` its fixed-text
    category, which the shard stage counts (the message may hold sizes and decoder output)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass(frozen=True)
class Prepared:
    data: bytes
    width: int
    height: int
    action: str  # "kept", or "re-encoded: <kinds>": fixed text, so counting it stays bounded
    detail: str = ""  # the same with the sizes involved, for the log


def prepare_image(data: bytes, max_side: int, quality: int) -> Prepared:
    if not data:
        raise BadImage("empty file", "0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage("not an image (no known image header)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImage("refused as a decompression bomb", str(err)) from None
    except Exception as err:  # PIL raises many types for garbage headers
        raise BadImage("unreadable image header", first_line(err)) from None

    width, height = image.size
    if width < 1 or height < 1:
        raise BadImage("degenerate size", f"{width}x{height}")
    reasons = _reencode_reasons(image, max_side)
    if not reasons:
        # Keep the bytes, but only if the whole JPEG stream decodes. Draft mode still reads
        # every entropy-coded block (truncation and broken streams fail here) but does the
        # inverse DCT at 1/8 scale, a fraction of a full decode's cost. Pillow and the loader's
        # torchvision both decode with libjpeg-turbo; Pillow keeps torch's imports out of
        # every shard job.
        try:
            image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
            image.load()
        except Exception as err:  # OSError for truncation, others for broken streams
            raise BadImage("JPEG does not decode", first_line(err)) from None
        return Prepared(data, width, height, "kept")

    scale = max_side / max(width, height)
    if scale < 1:
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        # JPEG DCT scaling: decode at 1/2, 1/4 or 1/8 when that still covers the target size.
        image.draft("RGB", target)
    else:
        target = (width, height)
    try:
        image.load()
    except Exception as err:  # OSError for truncation, SyntaxError/ValueError for corruption
        raise BadImage(f"cannot decode {image.format}", first_line(err)) from None
    rgb = to_rgb(image)
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality, progressive=False, optimize=False)
    kinds = ", ".join(kind for kind, _ in reasons)
    details = ", ".join(detail for _, detail in reasons)
    return Prepared(out.getvalue(), target[0], target[1], f"re-encoded: {kinds}", details)


def _reencode_reasons(image: Image.Image, max_side: int) -> list[tuple[str, str]]:
    """Why `image` must be re-encoded, as (kind, detail) pairs; empty when it can be kept."""
    reasons = []
    if image.format != "JPEG":
        kind = f"{image.format or 'unknown'} file"
        reasons.append((kind, kind))
    elif image.mode != "RGB":
        kind = f"{MODE_NAMES.get(image.mode, image.mode)} JPEG"
        reasons.append((kind, kind))
    elif image.info.get("progressive") or image.info.get("progression"):
        reasons.append(("progressive JPEG", "progressive JPEG"))
    if max(image.size) > max_side:
        reasons.append(("downscaled", f"longer side {max(image.size)} > max_side {max_side}"))
    return reasons


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparency is composited onto white rather than dropped to black."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    # CMYK JPEGs from Adobe tools store inverted values; PIL's JPEG plugin undoes that itself.
    return image.convert("RGB")
