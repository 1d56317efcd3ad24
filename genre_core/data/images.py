"""One image normaliser that everything uses: any file Pillow opens becomes an RGB uint8 array.

- Every mode Pillow opens (1, L, LA, P with transparency, RGBA, CMYK, I;16, I, F, ...) becomes RGB uint8;
  alpha is composited on white.
- EXIF orientation is applied; animated images give their first frame.
- Large JPEGs are decoded with draft mode (the decoder scales by 1/2, 1/4 or 1/8) and other formats are
  shrunk with Pillow's `reducing_gap`, so a 224-px target never resizes from full size with a slow filter.
- The decompression-bomb limit is raised on purpose for real paintings but capped (`max_pixels`).
- Resize policies: "squash" (stretch to the target), "crop" (centre-crop to the aspect, then resize) and
  "letterbox" (fit inside, pad the rest). Sizes are (width, height) as in Pillow.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 300_000_000
POLICIES = ("squash", "crop", "letterbox")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

ImageSource = Union[str, os.PathLike, bytes, BinaryIO]
Size = Union[int, tuple[int, int]]


class ImageError(ValueError):
    """A file that cannot be turned into an RGB image; the message names the file and the problem."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def parse_size(size: Size | str) -> tuple[int, int]:
    """Return (width, height) from 224, (300, 400) or the text "300x400" (width x height)."""
    if isinstance(size, str):
        parts = size.lower().replace(" ", "").split("x")
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"size {size!r} is not N or WIDTHxHEIGHT")
        size = (int(parts[0]), int(parts[1]))
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    width, height = int(size[0]), int(size[1])
    if width < 1 or height < 1 or width > 4096 or height > 4096:
        raise ValueError(f"size {width}x{height} is outside 1..4096 pixels")
    return width, height


def source_name(source: ImageSource, name: str | None = None) -> str:
    """Return a printable name for an image source (its path, or the given name for bytes)."""
    if name:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", None) or "<uploaded image>"


def open_image(source: ImageSource, *, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image lazily (header only), checking emptiness and the pixel cap. Raises ImageError."""
    label = source_name(source, name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError(label, "empty file (0 bytes)")
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ImageError(label, "file not found") from None
        except OSError as exc:
            raise ImageError(label, f"cannot read file ({exc.strerror or exc})") from None
        if path.is_dir():
            raise ImageError(label, "is a folder, not an image file")
        if size == 0:
            raise ImageError(label, "empty file (0 bytes)")
    # Pillow refuses images above 2 * MAX_IMAGE_PIXELS; we set the cap ourselves and check it explicitly.
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
    except UnidentifiedImageError:
        raise ImageError(label, "not an image file Pillow can read") from None
    except Image.DecompressionBombError:
        raise ImageError(label, f"too many pixels (over {max_pixels:,}); refusing to decode") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(label, f"cannot open image ({exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageError(label, f"{width}x{height} = {width * height:,} pixels is over the limit of {max_pixels:,}")
    if width < 1 or height < 1:
        raise ImageError(label, f"has no pixels ({width}x{height})")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a loaded Pillow image of any mode to RGB, compositing transparency on white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
        if mode == "RGB":
            return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(image)), "L").convert("RGB")
    if mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image).convert("RGB")
    return image.convert("RGB")


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    # 16-bit images keep their top byte; float images in [0, 1] are scaled, others are clipped to 0..255.
    values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if array.dtype.kind == "f":
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
    elif values.size and values.max() > 255:
        values = values / 257.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def load_rgb(
    source: ImageSource,
    size: Size | str | None = None,
    policy: str = "squash",
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    pad_color: tuple[int, int, int] = (0, 0, 0),
) -> np.ndarray:
    """Load any image as an RGB uint8 array of shape (height, width, 3), resized if `size` is given.

    Raises ImageError (a ValueError) whose message names the file and the problem.
    """
    if policy not in POLICIES:
        raise ValueError(f"resize policy {policy!r} is not one of {', '.join(POLICIES)}")
    target = parse_size(size) if size is not None else None
    label = source_name(source, name)
    image = open_image(source, name=name, max_pixels=max_pixels)
    try:
        if target is not None and image.format == "JPEG":
            # Draft mode asks the JPEG decoder for a scaled decode at least as large as the target, taking
            # a possible 90-degree EXIF rotation into account by asking for the larger side both ways.
            side = max(target)
            image.draft("RGB", (side, side))
        try:
            image.seek(0)
            image.load()
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError(label, f"truncated or corrupt image data ({exc})") from None
        except Image.DecompressionBombError:
            raise ImageError(label, f"too many pixels (over {max_pixels:,})") from None
        image = ImageOps.exif_transpose(image) or image
        image = to_rgb(image)
        if target is not None:
            image = _resize(image, target, policy, pad_color)
        array = np.asarray(image, dtype=np.uint8)
    finally:
        image.close()
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageError(label, f"unexpected decoded shape {array.shape}")
    return array


def _resize(image: Image.Image, target: tuple[int, int], policy: str, pad_color) -> Image.Image:
    if image.size == target:
        return image
    method = Image.Resampling.BILINEAR
    width, height = image.size
    target_width, target_height = target
    if policy == "squash":
        return image.resize(target, method, reducing_gap=2.0)
    if policy == "crop":
        # Crop the centred box of the target's aspect (whole pixels, at least one each way), then resize with
        # reducing_gap. (Pillow's resize(box=..., reducing_gap=...) can fail on fractional boxes.)
        scale = max(target_width / width, target_height / height)
        box_width = max(1, min(width, round(target_width / scale)))
        box_height = max(1, min(height, round(target_height / scale)))
        left, top = (width - box_width) // 2, (height - box_height) // 2
        image = image.crop((left, top, left + box_width, top + box_height))
        return image.resize(target, method, reducing_gap=2.0)
    # Letterbox: fit inside, at least one pixel each way (ImageOps.pad shrinks a 2000x3 strip to nothing).
    scale = min(target_width / width, target_height / height)
    inner = (
        max(1, min(target_width, round(width * scale))),
        max(1, min(target_height, round(height * scale))),
    )
    canvas = Image.new("RGB", target, tuple(pad_color))
    canvas.paste(image.resize(inner, method, reducing_gap=2.0),
                 ((target_width - inner[0]) // 2, (target_height - inner[1]) // 2))
    return canvas


def image_info(source: ImageSource, *, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Read only the header: width, height, mode, format and frame count. Raises ImageError."""
    image = open_image(source, name=name, max_pixels=max_pixels)
    try:
        return {
            "width": image.size[0],
            "height": image.size[1],
            "mode": image.mode,
            "format": image.format,
            "frames": getattr(image, "n_frames", 1),
        }
    finally:
        image.close()


def is_image_file(path: str | os.PathLike) -> bool:
    """True if the file name has one of the image extensions we read."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS
