"""Reading MedMNIST-format npz files without copying them into memory.

MedMNIST's files are zip archives of ``.npy`` members stored without compression, so each
member can be memory-mapped at its offset inside the archive. Compressed members fall back
to an ordinary read.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np

from ..utils import cache_folder

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zip local file header, 30 bytes


def read_member(path: Path, key: str) -> np.ndarray:
    """Return array ``key`` of the npz at ``path``, memory-mapped when it is stored raw."""
    with zipfile.ZipFile(path) as archive:
        try:
            member = archive.getinfo(f"{key}.npy")
        except KeyError:
            raise KeyError(key) from None
        if member.compress_type != zipfile.ZIP_STORED:
            with archive.open(member) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
    with open(path, "rb") as f:
        f.seek(member.header_offset)
        header = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
        name_len, extra_len = header[-2], header[-1]
        f.seek(name_len + extra_len, os.SEEK_CUR)
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{key} in {path} holds Python objects")
    if int(np.prod(shape)) == 0:
        return np.empty(shape, dtype=dtype)
    return np.memmap(
        path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"
    )


def _cache_file() -> Path:
    return cache_folder("md5.json")


def file_md5(path: Path) -> str:
    """MD5 of a file, cached by path, size and modification time (large files take seconds)."""
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    cache_path = _cache_file()
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    cache[key] = digest.hexdigest()
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(cache_path)
    except OSError:
        pass  # a read-only home only costs the checksum again next time
    return cache[key]
