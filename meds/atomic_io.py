"""Atomic, pickle-free persistence: safetensors for tensors, JSON for everything else.

Every write goes to a temporary file in the target folder and is then renamed over the
target (``os.replace`` is atomic on POSIX and Windows), so a crash never leaves a
half-written model or checkpoint behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:  # torch is imported where tensors are written, so viz/report stay light
    import torch


def _file_mode() -> int:
    """The mode a plain ``open()`` would give a new file (mkstemp makes them 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and then rename ``tmp_path`` to ``path``.

    The temporary file lives in the target's folder (created if needed), so the rename is
    atomic; on any error it is removed and the old ``path``, if any, is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(text.encode("utf-8"), path)


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def load_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_tensors(tensors: Mapping[str, "torch.Tensor"], path: str | os.PathLike) -> Path:
    """Write tensors (moved to CPU, made contiguous) as safetensors, atomically."""
    from safetensors.torch import save_file

    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(cpu, tmp))


def load_tensors(path: str | os.PathLike, device: "str | torch.device" = "cpu") -> "dict[str, torch.Tensor]":
    """Read a safetensors file (never unpickles)."""
    from safetensors.torch import load_file

    return load_file(str(path), device=str(device))
