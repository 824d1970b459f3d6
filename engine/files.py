"""Safe, unique, descriptive output file names."""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
from pathlib import Path


def slug(text: str, max_len: int = 40) -> str:
    """ASCII letters, digits and dashes only: no path separators or control characters survive."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return text[:max_len].rstrip("-") or "piece"


def unique_stem(folder: Path, stem: str) -> str:
    """stem, or stem-2, stem-3, ... so that no file of this stem exists in folder yet."""
    candidate, n = stem, 2
    while any(folder.glob(f"{candidate}.*")) or any(folder.glob(f"{candidate}-page*")):
        candidate = f"{stem}-{n}"
        n += 1
    return candidate


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with (os.fdopen(fd, "wb") if isinstance(text, bytes) else os.fdopen(fd, "w", encoding="utf-8")) as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_checksum(path: str | Path, chunk: int = 2**20) -> str:
    """sha256 of a file, read in chunks (model weights can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return "sha256:" + h.hexdigest()


def hf_cache() -> Path:
    """The Hugging Face hub cache (HF_HUB_CACHE / HF_HOME, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()
