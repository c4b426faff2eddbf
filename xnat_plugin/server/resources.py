"""File storage of the local XNAT server: safe names, atomic writes, MD5 digests, zip archives.

A file's content is written to a temporary file in its resource folder, fsynced and renamed into
place before its database row is committed, so a crash leaves at worst an unreferenced file,
never a row pointing at half a file. Each stored file gets a fresh random name, so replacing a
file (``overwrite=true``) never exposes a half-written version to a concurrent download.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import secrets
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from qa_core.errors import CbctQaError

__all__ = [
    "StoredContent",
    "UnsafePathError",
    "ZipLimits",
    "build_zip",
    "clean_relative_path",
    "safe_zip_members",
    "store_content",
]

_CHUNK = 1 << 20


class UnsafePathError(CbctQaError, ValueError):
    """A file path or zip member would escape its resource (absolute, ``..``) or is too large."""


@dataclass(frozen=True)
class StoredContent:
    """Where content was written, its size in bytes and MD5 hex digest."""

    stored_name: str
    size: int
    digest: str


@dataclass(frozen=True)
class ZipLimits:
    """Limits applied when unpacking an uploaded zip.

    Attributes
    ----------
    max_members : int
        Most files a zip may hold.
    max_total_bytes : int
        Most uncompressed bytes in total.
    max_ratio : float
        Largest allowed uncompressed/compressed ratio of one member (zip-bomb guard).
    """

    max_members: int = 100_000
    max_total_bytes: int = 8 * 1024**3
    max_ratio: float = 200.0


def clean_relative_path(path: str, what: str) -> str:
    """Normalise a client-given relative path; refuse absolute paths and ``..``.

    Raises
    ------
    UnsafePathError
        When the path is empty, absolute, climbs out of its folder or holds control
        characters.
    """
    text = path.replace("\\", "/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise UnsafePathError(f"{what}: absolute path {path!r} is not allowed; use a relative path")
    norm = posixpath.normpath(text)
    if norm in {"", "."} or norm.startswith("../") or norm == ".." or "\x00" in norm:
        raise UnsafePathError(f"{what}: path {path!r} leaves its folder; remove '..' parts")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in norm):
        # a CR/LF in a name would end up in the Content-Disposition header of its download
        raise UnsafePathError(f"{what}: path {path!r} contains control characters; rename the file")
    return norm


def store_content(folder: Path, source: IO[bytes] | bytes) -> StoredContent:
    """Write ``source`` atomically into ``folder`` under a new random name.

    Parameters
    ----------
    folder : Path
        The resource's folder (created when missing).
    source : binary file object or bytes
        Content, read to its end.
    """
    folder.mkdir(parents=True, exist_ok=True)
    stored_name = secrets.token_hex(12)
    tmp = folder / f".{stored_name}.part"
    md5 = hashlib.md5(usedforsecurity=False)
    size = 0
    stream: IO[bytes] = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with open(tmp, "wb") as out:
            while True:
                chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                md5.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # a source that fails midway (corrupt zip member) leaves nothing
        raise
    os.replace(tmp, folder / stored_name)
    return StoredContent(stored_name=stored_name, size=size, digest=md5.hexdigest())


def safe_zip_members(archive: zipfile.ZipFile, limits: ZipLimits, what: str) -> list[zipfile.ZipInfo]:
    """The regular-file members of ``archive`` after checking paths and sizes.

    Raises
    ------
    UnsafePathError
        On a member path escaping the archive, too many members, too many bytes in total or a
        suspicious compression ratio.
    """
    members = [m for m in archive.infolist() if not m.is_dir()]
    if len(members) > limits.max_members:
        raise UnsafePathError(f"{what}: {len(members)} files exceed the limit of {limits.max_members}")
    total = 0
    for member in members:
        clean_relative_path(member.filename, f"{what} member")
        total += member.file_size
        if member.compress_size > 0 and member.file_size / member.compress_size > limits.max_ratio \
                and member.file_size > 1_000_000:
            raise UnsafePathError(
                f"{what}: member {member.filename!r} expands {member.file_size / member.compress_size:.0f}x;"
                " refusing a likely zip bomb"
            )
    if total > limits.max_total_bytes:
        raise UnsafePathError(
            f"{what}: {total} uncompressed bytes exceed the limit of {limits.max_total_bytes}"
        )
    return members


def build_zip(entries: Iterable[tuple[str, Path]], folder: Path) -> Path:
    """Write a zip of ``(arcname, path)`` entries to a new temporary file in ``folder``.

    Members are stored, not compressed (DICOM and PNG barely compress); the caller streams the
    file to the client and deletes it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"download-{secrets.token_hex(8)}.zip"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        seen: set[str] = set()
        for arcname, path in entries:
            if arcname in seen:
                continue
            seen.add(arcname)
            archive.write(path, arcname)
    return target
