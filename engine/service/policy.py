"""What a client of the service may reach: which models it may name, whether the server may
download, how much disk a session may fill, and what an error may say. One place for the
server's limits, so every door (the page, the HTTP API, scripts) applies the same ones."""
from __future__ import annotations

import errno
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from engine.errors import CadenzaError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")
MODEL_FILE_SUFFIXES = (".pth",)


class NotOffered(CadenzaError):
    """A model the server does not offer (the same words whether or not a file exists there)."""


class DiskFull(CadenzaError):
    """The server cannot write: the disk is full, below its free-space floor, or a session is at its quota."""


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError, RuntimeError):
        return False


@dataclass
class ModelPolicy:
    """Models a client may name. Local: folders holding config.json and .pth files under the
    models folders the server was started with (and the Hugging Face cache). Hub: a repo id only
    when it is in the cache, or when the person running the server allowed downloads (of any repo
    with "*", else of the repos listed). The models the server was started with are always allowed."""
    roots: tuple[Path, ...]
    allow_downloads: tuple[str, ...] = ()  # () off, ("*",) any repo, else repo ids
    trusted: tuple[str, ...] = ()  # --model as the admin gave it
    trusted_audio: tuple[str, ...] = ()  # --audio-model, --melody-model

    def may_download(self, repo_id: str) -> bool:
        return "*" in self.allow_downloads or repo_id in self.allow_downloads

    def check_download(self, repo_id: str) -> None:
        if not self.allow_downloads:
            raise NotOffered("this server does not download models: the person running it can start it with "
                             "--allow-downloads (optionally naming the repos allowed)")
        if not self.may_download(repo_id):
            raise NotOffered(f"this server downloads only from {', '.join(self.allow_downloads)}")

    def _not_offered(self, spec: str) -> NotOffered:
        names = self.offered()
        listed = f" (offered: {', '.join(names[:12])})" if names else ""
        return NotOffered(f"no model {str(spec)[:200]!r} on this server: name a model in its models folder{listed}")

    def offered(self) -> list[str]:
        """Names of the local models, as a client may give them (relative to a models folder)."""
        names: list[str] = []
        for root in self.roots[:1]:  # the models folder; the Hugging Face cache is listed by Download
            if not root.is_dir():
                continue
            for p in sorted(root.iterdir())[:200]:  # bounded: a models folder is small
                if _inside(p, root) and ((p / "config.json").is_file() or p.suffix in MODEL_FILE_SUFFIXES):
                    names.append(p.name)
        return names

    def _local(self, spec, fits) -> str | None:
        """The path `spec` names inside one of the models folders when `fits(path)` says it is a
        model; None otherwise (whatever is there)."""
        if not isinstance(spec, str) or not spec.strip() or "\x00" in spec:
            return None
        name = spec.strip()
        for root in self.roots:
            candidate = Path(os.path.normpath(Path(name) if Path(name).is_absolute() else root / name))
            try:
                if _inside(candidate, root) and fits(candidate):
                    return str(candidate)
            except (OSError, ValueError):
                continue
        return None

    def notagen(self, spec: str | None) -> str | None:
        """The path of the NotaGen/Cadenza model `spec` names; None (the server's own) stays None."""
        if spec is None or spec in self.trusted:
            return spec
        found = self._local(spec, lambda p: (p.suffix in MODEL_FILE_SUFFIXES and p.is_file())
                            or (p / "config.json").is_file())
        if found is None:
            raise self._not_offered(spec)
        return found

    def musicgen(self, spec: str) -> tuple[str, bool]:
        """(what to load, whether it may be downloaded) for a MusicGen model a client named. The
        admin's own (--audio-model, --melody-model) as given; a hub id not in the cache and not
        allowed to download then fails to load with a message saying how to get it."""
        if spec in self.trusted_audio:
            return spec, self.may_download(spec)
        found = self._local(spec, lambda p: (p / "config.json").is_file())
        if found is not None:
            return found, False
        name = spec.strip() if isinstance(spec, str) else ""
        if HUB_ID.fullmatch(name):
            if self.may_download(name):
                return name, True
            if _in_hub_cache(name):
                return name, False  # loaded from the cache only
        raise self._not_offered(spec)


def weights_present(name: str) -> bool:
    """A MusicGen model is at hand: a local folder with its config, or a hub id in the cache."""
    return (Path(name) / "config.json").is_file() or (HUB_ID.fullmatch(name) is not None and _in_hub_cache(name))


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except (ValueError, OSError):
        return False


@dataclass
class DiskPolicy:
    """Bounds on what the outputs folder may hold: per session (bytes and pieces), for the whole
    server (bytes, because session keys are free to make up), and a floor of free space."""
    session_bytes: int
    session_pieces: int
    min_free_bytes: int
    max_total_bytes: int | None = None  # every session's pieces together (None: no cap)
    evict_idle_s: float = 24 * 3600.0  # over the cap, pieces of sessions idle this long go, oldest first

    def total_full(self, total: int, cap: int) -> DiskFull:
        return DiskFull(f"the server's space for pieces is full ({total / 2**30:.1f} of {cap / 2**30:.1f} GB, "
                        "most of it in sessions in use now): new pieces are refused until some are deleted; your "
                        "pieces so far are kept")

    def check(self, root: Path, used_bytes: int, pieces: int) -> None:
        try:
            free = shutil.disk_usage(root if root.exists() else root.parent).free
        except OSError:
            free = None
        if free is not None and free < self.min_free_bytes:
            raise DiskFull("the server's disk is nearly full: new pieces are refused until the person running it "
                           "frees space (your pieces so far are kept)")
        if used_bytes >= self.session_bytes or pieces >= self.session_pieces:
            raise DiskFull(f"this session holds {pieces} pieces in {used_bytes / 2**20:.0f} MB, its limit is "
                           f"{self.session_pieces} pieces and {self.session_bytes / 2**20:.0f} MB: delete pieces "
                           "you no longer need in History to make room")


def disk_error(e: OSError) -> DiskFull:
    """An OSError from writing a piece, in words without server paths."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull("the server's disk is full: the piece was not saved (your ABC stays in the page: copy it "
                        "somewhere safe, or try again once the person running the server has freed space)")
    return DiskFull(f"the server could not save the piece ({e.strerror or type(e).__name__}): your ABC stays in "
                    "the page")


_PATH = re.compile(r"(?<![\w/.:])/(?:[\w.@+~-]+/)+([\w.@+~-]*)")


def public(message: str) -> str:
    """An error as a client may read it: absolute server paths shortened to their last part."""
    return _PATH.sub(lambda m: m.group(1) or "(a folder)", str(message))
