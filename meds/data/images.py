"""Image and mask reading, file listing and the shared error policy of the loaders.

Every image comes back as ``(H, W, 3) uint8`` RGB whatever it was (:func:`decode_image`:
grayscale, palette, RGBA/LA (alpha dropped), CMYK, 16-bit and float images and arrays are
converted); every mask as ``(H, W) bool`` (any non-zero pixel is a defect).
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .types import Sample, is_image_file

__all__ = [
    "ImageReadError",
    "DataWarning",
    "decode_image",
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


def _scale_16bit(arr: np.ndarray) -> np.ndarray:
    """A 16-bit range (0..65535) onto 0..255, rounded: 257 * v maps back to v."""
    return np.clip(np.rint(arr.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


def _array_to_rgb(arr: np.ndarray, argument: str) -> np.ndarray:
    """The array rules of :func:`decode_image` (shape and dtype checked, values scaled)."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"{argument}: expected an image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {arr.shape}"
        )
    kind, size = arr.dtype.kind, arr.dtype.itemsize
    if kind == "u" and size == 2:
        arr = _scale_16bit(arr)
    elif kind == "b":
        arr = arr.astype(np.uint8) * np.uint8(255)
    elif kind == "f":
        if arr.size and (not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0):
            raise ValueError(f"{argument}: float images must hold finite values in [0, 1]")
        arr = np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    elif not (kind == "u" and size == 1):
        raise TypeError(f"{argument}: expected dtype uint8, uint16, bool or float in [0, 1], got {arr.dtype}")
    arr = arr[:, :, :3] if arr.shape[2] >= 3 else np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def _pil_to_rgb(img: Image.Image, argument: str) -> np.ndarray:
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        # Pillow opens 16-bit grayscale PNG/TIFF as I;16 or I (32-bit); files have no value
        # convention, so: floats up to 1 are [0, 1], integers above 255 are 16-bit.
        arr = np.asarray(img)
        if mode == "F":
            a = np.nan_to_num(arr.astype(np.float64))
            scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
            return _array_to_rgb(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), argument)
        if mode.startswith("I;16") or (arr.size and arr.max() > 255):
            return _array_to_rgb(_scale_16bit(arr), argument)
        return _array_to_rgb(np.clip(arr, 0, 255).astype(np.uint8), argument)
    if mode in ("RGB", "RGBA", "RGBa", "RGBX", "L"):
        return _array_to_rgb(np.asarray(img), argument)  # alpha dropped, gray repeated
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return _array_to_rgb(np.asarray(img.convert("RGB")), argument)  # LA, P, 1, CMYK, YCbCr, ...


def decode_image(image, argument: str = "image") -> np.ndarray:
    """The one image decoder of meds: any accepted input -> ``(H, W, 3) uint8`` RGB.

    Every entry point (:func:`read_image`, the detectors' ``fit``/``predict``, the feature
    extractor and its cache) goes through it, so a file, its PIL image and its array give the
    same pixels, hence the same features.

    Args:
        image: a file path; a PIL image (any mode); a numpy array or CPU torch tensor of shape
            ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` with dtype uint8, uint16
            (16-bit range), bool, or float with values in ``[0, 1]``.
        argument: name used in error messages.

    Returns:
        ``(H, W, 3)`` contiguous uint8: grayscale is repeated, alpha dropped, 16-bit values
        scaled to 8 bits (``round(v / 257)``), floats to ``round(255 * v)``.

    Raises:
        ImageReadError: a file is missing or cannot be decoded (the message names it).
        TypeError: an unsupported input type or dtype.
        ValueError: an impossible shape, or float values outside ``[0, 1]``.
    """
    if isinstance(image, (str, os.PathLike)):
        img = _open(image, "image")
        try:
            return _pil_to_rgb(img, f"image {os.fspath(image)!r}")
        except (OSError, ValueError) as exc:
            raise ImageReadError(f"cannot read image {os.fspath(image)!r}: {exc}") from exc
        finally:
            img.close()
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image, argument)
    torch = sys.modules.get("torch")  # a tensor can only come from a caller that imported torch
    if torch is not None and isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{argument}: expected a path, numpy array or PIL image, got {type(image).__name__}")
    return _array_to_rgb(image, argument)


def read_image(path: str | Path, size: SizeLike = None) -> np.ndarray:
    """Read an image file as RGB (decoded by :func:`decode_image`).

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
    rgb = decode_image(Path(path))
    if hw is not None and rgb.shape[:2] != hw:
        rgb = np.asarray(Image.fromarray(rgb).resize((hw[1], hw[0]), Image.BILINEAR))
    return np.ascontiguousarray(rgb)


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

