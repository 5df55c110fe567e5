"""Atomic, pickle-free persistence: safetensors for tensors, JSON for everything else.

Single files: every write goes to a temporary file in the target folder, is flushed to
disk and then renamed over the target (``os.replace`` is atomic on POSIX and Windows), so
a crash leaves either the old file or the new one.

Several files that belong together (a model: config + weights; a checkpoint: metadata +
tensors) are a *bundle*, committed by :func:`commit_bundle`: each tensor file gets a name
of its own content (``<stem>.<sha256 prefix>.safetensors``), and a JSON *manifest* that
records each file's name, size and sha256 is renamed into place last. That rename is the
commit, so a reader sees the whole old bundle or the whole new one, never a mix;
:func:`read_bundle` checks every file against the manifest. Files of the replaced bundle
and temporary files of interrupted writes are removed by the next commit (or by
:func:`remove_stale`), which the caller runs under the folder's lock.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Sequence

if TYPE_CHECKING:  # torch is imported where tensors are written, so viz/report stay light
    import torch

#: ``MEDS_TEST_KILL_AT=<point>[#n]`` makes the process exit (code :data:`KILL_EXIT_CODE`,
#: no clean-up) the ``n``-th time (default 1st) it reaches the named point of a write; the
#: durability tests use it to kill a save at every step.
KILL_ENV = "MEDS_TEST_KILL_AT"
KILL_EXIT_CODE = 86
_kill_counts: dict = {}

_HASH_CHUNK = 1 << 20
_TMP_SUFFIX = ".tmp"


class CorruptFileError(ValueError):
    """A saved file is missing, truncated, edited or otherwise unusable (one-line message)."""


def kill_point(point: str) -> None:
    """Test hook: exit at once if :data:`KILL_ENV` names ``point`` (see above)."""
    wanted = os.environ.get(KILL_ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition("#")
    if name != point:
        return
    _kill_counts[point] = _kill_counts.get(point, 0) + 1
    if _kill_counts[point] == (int(nth) if nth else 1):
        os._exit(KILL_EXIT_CODE)


def current_umask() -> int:
    """The process umask (reading it means setting it: it is put straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _file_mode() -> int:
    """The mode a plain ``open()`` would give a new file (mkstemp makes them 0600)."""
    return 0o666 & ~current_umask()


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; Windows has no directory handles)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, point: Optional[str] = None) -> Path:
    """Call ``write(tmp_path)``, flush it to disk and rename ``tmp_path`` to ``path``.

    The temporary file (``.<name>.<random>.tmp``) lives in the target's folder (created if
    needed), so the rename is atomic; on any error it is removed and the old ``path``, if
    any, is left untouched. ``point`` names the :func:`kill_point` between write and rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())
        _fsync_file(tmp)
        if point is not None:
            kill_point(point)
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


def atomic_write_csv(header: Sequence[str], rows: Iterable[Sequence[Any]], path: str | os.PathLike) -> Path:
    """Write a CSV (``header``, then ``rows``; ``\n`` line ends) to ``path`` atomically."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_text(buffer.getvalue(), path)


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return atomic_write_text(_json_text(obj), path)


def load_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing file raises ``FileNotFoundError``, an unreadable one
    :class:`CorruptFileError` naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptFileError(f"{path}: not valid JSON (truncated or edited?): {error}") from None


def save_tensors(tensors: Mapping[str, "torch.Tensor"], path: str | os.PathLike) -> Path:
    """Write tensors (moved to CPU, made contiguous) as safetensors, atomically."""
    from safetensors.torch import save_file

    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(cpu, tmp))


def load_tensors(path: str | os.PathLike, device: "str | torch.device" = "cpu") -> "dict[str, torch.Tensor]":
    """Read a safetensors file (never unpickles); an unreadable one raises
    :class:`CorruptFileError` naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise CorruptFileError(f"{path}: not a readable safetensors file (truncated?): {error}") from None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- bundles: several files, one commit ------------------------------------------------


def _data_pattern(stem: str) -> "re.Pattern[str]":
    return re.compile(rf"{re.escape(stem)}\.[0-9a-f]{{16}}\.safetensors")


def commit_bundle(folder: str | os.PathLike, manifest_name: str, manifest: Mapping[str, Any],
                  tensors: Mapping[str, Mapping[str, "torch.Tensor"]]) -> Path:
    """Write tensor files and the manifest that binds them, as one atomic commit.

    Args:
        folder: Target folder (created if needed). The caller holds its lock.
        manifest_name: The manifest's file name, e.g. ``"config.json"``.
        manifest: JSON content; a ``"files"`` entry ``{stem: {"name", "size", "sha256"}}``
            is added.
        tensors: ``{stem: {tensor name: tensor}}``, one safetensors file per stem.

    Returns:
        The manifest's path.

    Kill points (:func:`kill_point`), in order: ``<manifest_name>:data-written`` (before
    a data file's rename; once per stem), ``<manifest_name>:data-renamed``,
    ``<manifest_name>:manifest-written`` (before the commit rename),
    ``<manifest_name>:committed`` (before the old files are removed).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for stem, group in tensors.items():
        cpu = {name: t.detach().to("cpu").contiguous() for name, t in group.items()}
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=_TMP_SUFFIX, dir=folder)
        os.close(fd)
        try:
            save_file(cpu, tmp)
            os.chmod(tmp, _file_mode())
            _fsync_file(tmp)
            digest, size = sha256_file(tmp), os.path.getsize(tmp)
            kill_point(f"{manifest_name}:data-written")
            name = f"{stem}.{digest[:16]}.safetensors"
            os.replace(tmp, folder / name)  # a new name: the old bundle still holds
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        files[stem] = {"name": name, "size": size, "sha256": digest}
    kill_point(f"{manifest_name}:data-renamed")
    text = _json_text({**manifest, "files": files})
    path = atomic_write(folder / manifest_name, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"),
                        point=f"{manifest_name}:manifest-written")
    _fsync_dir(folder)
    kill_point(f"{manifest_name}:committed")
    remove_stale(folder, [manifest_name])
    return path


def remove_stale(folder: str | os.PathLike, manifests: "list[str]") -> list[Path]:
    """Remove what interrupted writes leave in ``folder``: temporary files (``.*.tmp``)
    and data files of the named manifests' stems that the current manifests do not
    reference. Call it only while holding the folder's lock.

    Returns:
        The removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    referenced, stems = set(), set()
    for manifest_name in manifests:
        stems.add(Path(manifest_name).stem)
        try:
            saved = load_json(folder / manifest_name)
        except (FileNotFoundError, CorruptFileError):
            continue
        entries = saved.get("files") if isinstance(saved, dict) else None
        if isinstance(entries, dict):
            for stem, entry in entries.items():
                stems.add(stem)
                if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                    referenced.add(entry["name"])
    patterns = [_data_pattern(stem) for stem in stems]
    removed = []
    for path in folder.iterdir():
        name = path.name
        stale_tmp = name.startswith(".") and name.endswith(_TMP_SUFFIX) and path.is_file()
        orphan = name not in referenced and any(p.fullmatch(name) for p in patterns)
        if stale_tmp or orphan:
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def read_bundle(folder: str | os.PathLike, manifest_name: str, who: str) -> tuple[dict, dict]:
    """Read a manifest written by :func:`commit_bundle` and check its files.

    Args:
        folder: The bundle's folder.
        manifest_name: The manifest's file name.
        who: Prefix of error messages (e.g. ``"MeDS.load"``).

    Returns:
        ``(manifest, {stem: path})``; every file has the recorded size and sha256.

    Raises:
        FileNotFoundError: No manifest.
        CorruptFileError: Unreadable manifest, or a file missing, truncated or changed.
    """
    folder = Path(folder)
    manifest_path = folder / manifest_name
    for attempt in range(3):
        manifest = load_json(manifest_path)
        if not isinstance(manifest, dict):
            raise CorruptFileError(f"{who}: {manifest_path}: expected a JSON object, got {type(manifest).__name__}")
        entries = manifest.get("files")
        if not isinstance(entries, dict) or not entries:
            raise CorruptFileError(f"{who}: {manifest_path}: key 'files' (the list of checksummed files) is missing")
        paths, vanished = {}, False
        for stem, entry in entries.items():
            key = f"files.{stem}"
            if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                    and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)):
                raise CorruptFileError(f"{who}: {manifest_path}: key '{key}' must hold name, size and sha256")
            if Path(entry["name"]).name != entry["name"]:
                raise CorruptFileError(f"{who}: {manifest_path}: key '{key}.name' must be a file name, got {entry['name']!r}")
            path = folder / entry["name"]
            if not path.is_file():
                vanished = True
                break
            size = path.stat().st_size
            if size != entry["size"]:
                raise CorruptFileError(f"{who}: {path}: truncated or changed: {size} bytes, "
                                       f"{manifest_name} records {entry['size']}")
            if sha256_file(path) != entry["sha256"]:
                raise CorruptFileError(f"{who}: {path}: content changed since it was saved "
                                       f"(sha256 differs from the one in {manifest_name})")
            paths[stem] = path
        if not vanished:
            return manifest, paths
        # A writer may have committed a new bundle and removed this one's files meanwhile.
    raise CorruptFileError(f"{who}: {path}: missing (named in {manifest_path})")
