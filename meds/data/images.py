"""Image and mask reading, file listing and the shared error policy of the loaders.

Every image comes back as ``(H, W, 3) uint8`` RGB whatever is on disk (grayscale,
palette, RGBA/LA (alpha dropped), CMYK, 16-bit and float images are converted); every
mask as ``(H, W) bool`` (any non-zero pixel is a defect).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .types import Sample, is_image_file

__all__ = [
    "ImageReadError",
    "DataWarning",
    "read_image",
    "read_mask",
    "image_size",
    "list_images",
    "natural_key",
]

SizeLike = Union[int, "tuple[int, int]", None]


class ImageReadError(ValueError):
    """An image or mask file is missing, unreadable or inconsistent. The message names it."""


class DataWarning(UserWarning):
    """A dataset problem that was skipped (``on_error="skip"``) or a capped request."""


def _check_on_error(on_error: str, func: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"{func}: on_error must be 'raise' or 'skip', got {on_error!r}")


def _problem(on_error: str, message: str) -> None:
    """Raise :class:`ImageReadError` or warn, following the loader's ``on_error`` policy."""
    if on_error == "raise":
        raise ImageReadError(message)
    warnings.warn(f"skipped: {message}", DataWarning, stacklevel=3)


def _size_hw(size: SizeLike, func: str) -> tuple[int, int] | None:
    """``int`` -> square; ``(H, W)`` tuple -> as is; ``None`` -> keep the file's size."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    else:
        try:
            h, w = (int(v) for v in size)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise ValueError(f"{func}: size must be an int or an (H, W) pair, got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{func}: size must be positive, got {size!r}")
    return h, w


def _open(path: str | Path, what: str) -> Image.Image:
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"cannot read {what} {str(p)!r}: file not found")
    try:
        img = Image.open(p)
        img.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"cannot read {what} {str(p)!r}: {exc}") from exc
    return img


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 16-bit / 32-bit / float array to uint8 (full range kept)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f":
        a = np.nan_to_num(arr.astype(np.float64))
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
        return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    a = arr.astype(np.int64)
    if mode.startswith("I;16") or arr.dtype == np.uint16 or (a.size and a.max() > 255):
        # 16-bit range (Pillow loads 16-bit grayscale PNG/TIFF as I;16 or I)
        return np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)


def read_image(path: str | Path, size: SizeLike = None) -> np.ndarray:
    """Read an image file as RGB.

    Args:
        path: Image file (png, jpg, jpeg, bmp, tif, tiff).
        size: ``None`` keeps the file's size; an ``int`` resizes to a square; an
            ``(H, W)`` pair resizes to that shape (bilinear, antialiased).

    Returns:
        ``(H, W, 3)`` uint8 RGB array. Grayscale is replicated, alpha is dropped,
        16-bit data is scaled to 8 bits.

    Raises:
        ImageReadError: The file is missing or cannot be decoded (the message names it).
    """
    hw = _size_hw(size, "read_image")
    img = _open(path, "image")
    try:
        mode = img.mode
        if mode in ("RGB",):
            rgb = np.asarray(img)
        elif mode.startswith("I") or mode == "F":
            gray = _to_uint8(np.asarray(img), mode)
            rgb = np.repeat(gray[..., None], 3, axis=2)
        elif mode in ("RGBA", "RGBa", "RGBX"):
            rgb = np.asarray(img)[..., :3]
        else:  # L, LA, P, PA, 1, CMYK, YCbCr, LAB, HSV, ...
            if mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")
            rgb = np.asarray(img.convert("RGB"))
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ImageReadError(f"cannot read image {str(path)!r}: unexpected shape {rgb.shape}")
        rgb = _to_uint8(rgb, mode)
        if hw is not None and rgb.shape[:2] != hw:
            pil = Image.fromarray(np.ascontiguousarray(rgb))
            rgb = np.asarray(pil.resize((hw[1], hw[0]), Image.BILINEAR))
    except ImageReadError:
        raise
    except (OSError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {str(path)!r}: {exc}") from exc
    finally:
        img.close()
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an image file, from its header only.

    Raises:
        ImageReadError: The file is missing or not an image.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"cannot read image {str(p)!r}: file not found")
    try:
        with Image.open(p) as img:
            w, h = img.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"cannot read image {str(p)!r}: {exc}") from exc
    return int(h), int(w)


def read_mask(path: str | Path | Sample | None, size: SizeLike = None) -> np.ndarray:
    """Read a ground-truth mask as a boolean array.

    Args:
        path: A mask file, or a :class:`Sample` (good sample without a mask -> all
            False at the image's size; defective sample without a mask -> error), or
            ``None`` (all False; needs ``size``).
        size: As in :func:`read_image` (nearest-neighbour resizing).

    Returns:
        ``(H, W)`` bool, True on defect pixels (any non-zero value in the file).

    Raises:
        ImageReadError: Missing/unreadable mask file, or a defective sample with no mask.
    """
    hw = _size_hw(size, "read_mask")
    if isinstance(path, Sample):
        sample = path
        if sample.mask_path is None:
            if sample.label == 1:
                raise ImageReadError(
                    f"read_mask: defective image {sample.path!r} (category {sample.category!r}, "
                    f"defect {sample.defect_type!r}) has no mask"
                )
            return np.zeros(hw if hw is not None else image_size(sample.path), dtype=bool)
        path = sample.mask_path
    if path is None:
        if hw is None:
            raise ValueError("read_mask: path is None and no size given; cannot make an empty mask")
        return np.zeros(hw, dtype=bool)
    img = _open(path, "mask")
    try:
        arr = np.asarray(img)
        if img.mode == "P":
            arr = np.asarray(img.convert("L"))
        if arr.ndim == 3:
            arr = arr[..., :3].max(axis=2) if img.mode not in ("LA", "La", "PA") else arr[..., 0]
        mask = arr > 0
        if hw is not None and mask.shape != hw:
            pil = Image.fromarray(mask.astype(np.uint8) * 255)
            mask = np.asarray(pil.resize((hw[1], hw[0]), Image.NEAREST)) > 127
    except (OSError, ValueError) as exc:
        raise ImageReadError(f"cannot read mask {str(path)!r}: {exc}") from exc
    finally:
        img.close()
    return np.ascontiguousarray(mask)


_NUM = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders ``img2`` before ``img10`` (ties broken by the raw string)."""
    parts = _NUM.split(name)
    return tuple((0, int(p), p) if p.isdigit() else (1, p.lower(), p) for p in parts) + (name,)


def list_images(directory: str | Path, recursive: bool = False) -> list[Path]:
    """Image files in ``directory`` (extensions in ``IMAGE_EXTENSIONS``, any case),
    hidden files skipped, in natural sorted order of their relative paths."""
    d = Path(directory)
    if not d.is_dir():
        return []
    it = d.rglob("*") if recursive else d.iterdir()
    files = [
        p
        for p in it
        if p.is_file() and is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(d).parts)
    ]
    return sorted(files, key=lambda p: natural_key(p.relative_to(d).as_posix()))


def check_readable(path: str | Path, on_error: str) -> bool:
    """Header check used by the loaders: True if ``path`` opens as an image; otherwise
    raise or warn according to ``on_error`` and return False."""
    try:
        image_size(path)
    except ImageReadError as exc:
        _problem(on_error, str(exc))
        return False
    return True

