"""Where the studio keeps people's pieces: one outputs directory, a folder per session, a folder
per piece holding its files and a record.json written last (atomically), so a closed browser or a
restarted server loses nothing and a half-written piece never shows up in a history.

A session is named by a secret key the browser keeps; its folder is named by a hash of the key,
so folder names (which appear in manifests and logs) never give the key away, and nobody can
reach a session's files without its key.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import re
import shutil
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from engine.errors import CadenzaError
from engine.files import slug, write_atomic

RECORD_FILE = "record.json"
DELETED_DIR = ".deleted"  # the pieces of a session's last Delete, held for Undo
JOURNAL_DIR = ".live"  # inside a session's folder: the text of pieces being written (Journal)
JOURNAL_EVERY_S = 2.0  # a piece's text reaches the disk this often while it is written
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,128}")  # the whole key (fullmatch: no trailing newline)
PIECE_ID = re.compile(r"[A-Za-z0-9-]{1,120}")
MAX_HISTORY = 500  # pieces listed at most (newest first); older ones stay on disk
MAX_TITLE = 120  # characters in a title a user gives a piece


def valid_key(key) -> bool:
    return isinstance(key, str) and KEY_PATTERN.fullmatch(key) is not None


@dataclass
class PieceRecord:
    id: str  # the piece's folder name inside its session
    created: str  # ISO 8601, UTC
    kind: str  # composed | continued | rewritten | rendered | transposed | uploaded
    title: str  # what the history shows: "Bach, Johann Sebastian / Choral"
    prompt: dict = field(default_factory=dict)  # period, composer, instrumentation
    seed: int | None = None
    model: str = ""
    bars: int = 0
    seconds: float = 0.0
    stop_reason: str = ""  # a StopReason's value (engine.stops); "" for renders and uploads
    alignment: str = ""  # "12/12 bars aligned"
    files: dict[str, list[str]] = field(default_factory=dict)  # format -> file names in the folder
    errors: dict[str, str] = field(default_factory=dict)  # format -> why it failed
    warnings: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)  # sampling and bounds as asked
    analysis: dict = field(default_factory=dict)  # the musical check (engine.symbolic.analysis.Analysis)

    @classmethod
    def from_dict(cls, d: dict) -> "PieceRecord":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


class Session:
    """One person's pieces."""

    def __init__(self, root: Path, key: str):
        if not valid_key(key):
            raise CadenzaError("invalid session key: expected 16 to 128 letters, digits, '-' or '_'")
        self.id = hashlib.sha256(key.encode()).hexdigest()[:32]
        self.folder = root / self.id

    @classmethod
    def at(cls, folder: Path) -> "Session":
        """The session kept in `folder` (for the server's own upkeep: no key is needed or known)."""
        session = cls.__new__(cls)
        session.id, session.folder = folder.name, folder
        return session

    def new_piece(self, name: str) -> tuple[str, Path]:
        """A fresh folder for a piece: 20261122-153012-bach-choral-seed7 (-2, -3 ... if taken)."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        base = f"{stamp}-{slug(name)}"
        self.folder.mkdir(parents=True, exist_ok=True)
        for n in range(1, 1000):  # bounded: a thousand pieces of one name in one second is absurd
            piece_id = base if n == 1 else f"{base}-{n}"
            try:
                (self.folder / piece_id).mkdir()
                return piece_id, self.folder / piece_id
            except FileExistsError:
                continue
        raise CadenzaError(f"could not make a folder for {name!r}")

    def save(self, record: PieceRecord) -> None:
        write_atomic(self.piece_folder(record.id) / RECORD_FILE, json.dumps(asdict(record), indent=1) + "\n")

    def piece_folder(self, piece_id: str) -> Path:
        if not isinstance(piece_id, str) or not PIECE_ID.fullmatch(piece_id):
            raise CadenzaError(f"no piece {piece_id!r} in this session")
        return self.folder / piece_id

    def record(self, piece_id: str) -> PieceRecord:
        path = self.piece_folder(piece_id) / RECORD_FILE
        try:
            return PieceRecord.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise CadenzaError(f"no piece {piece_id!r} in this session") from e

    def touch(self, piece_id: str) -> None:
        """Marks a piece as opened now: its record's time is when it was last written or opened,
        which orders what a full server lets go of first (OutputStore.evict)."""
        try:
            os.utime(self.piece_folder(piece_id) / RECORD_FILE)
        except OSError:
            pass

    def journal(self, job_id: str, about: dict) -> "Journal":
        return Journal(self.folder / JOURNAL_DIR / f"{slug(job_id)}.json", about)

    def journals(self) -> list[Path]:
        """Journals left behind: pieces whose server died while it wrote them."""
        return sorted((self.folder / JOURNAL_DIR).glob("*.json"))

    def usage(self) -> tuple[int, int]:
        """(bytes, pieces) this session holds on disk."""
        if not self.folder.is_dir():
            return 0, 0
        pieces = [p for p in self.folder.iterdir() if p.is_dir() and p.name != DELETED_DIR]  # deleted: not held
        return sum(_size(p) for p in pieces), sum((p / RECORD_FILE).is_file() for p in pieces)

    def rename(self, piece_id: str, title: str) -> PieceRecord:
        """A new title for a piece (History's Rename): its record only; files keep their names."""
        title = title.strip() if isinstance(title, str) else ""
        if not 1 <= len(title) <= MAX_TITLE or any(ord(ch) < 32 for ch in title):
            raise CadenzaError(f"a title is 1 to {MAX_TITLE} characters on one line")
        record = replace(self.record(piece_id), title=title)
        self.save(record)
        return record

    def delete(self, piece_ids: list[str]) -> int:
        """Takes pieces out of the session (History's Delete); returns the bytes freed. They are
        held aside until the next Delete (or a restart), so that the last Delete can be undone;
        what an earlier Delete held goes now."""
        folders = [self.piece_folder(pid) for pid in piece_ids]
        for folder in folders:  # every id checked before anything moves
            if not (folder / RECORD_FILE).is_file():
                raise CadenzaError(f"no piece {folder.name!r} in this session")
        held = self.folder / DELETED_DIR
        shutil.rmtree(held, ignore_errors=True)
        held.mkdir(parents=True)
        freed = 0
        for folder in folders:
            freed += _size(folder)
            folder.rename(held / folder.name)
        return freed

    def held(self) -> tuple[int, int]:
        """(bytes, pieces) of the last Delete, held for Undo."""
        held = self.folder / DELETED_DIR
        folders = [p for p in held.iterdir() if (p / RECORD_FILE).is_file()] if held.is_dir() else []
        return sum(_size(p) for p in folders), len(folders)

    def undelete(self) -> list[str]:
        """The pieces of the last Delete back in the session (ids already taken again are left)."""
        held = self.folder / DELETED_DIR
        back = []
        for folder in sorted(held.iterdir()) if held.is_dir() else []:
            if (folder / RECORD_FILE).is_file() and not (self.folder / folder.name).exists():
                folder.rename(self.folder / folder.name)
                back.append(folder.name)
        shutil.rmtree(held, ignore_errors=True)
        return back

    def history(self, limit: int = MAX_HISTORY) -> list[PieceRecord]:
        """This session's pieces, newest first."""
        if not self.folder.is_dir():
            return []
        folders = sorted((p for p in self.folder.iterdir() if (p / RECORD_FILE).is_file()), reverse=True)
        out = []
        for p in folders[:limit]:
            try:
                out.append(self.record(p.name))
            except CadenzaError:
                continue  # a record damaged on disk hides that piece, not the whole history
        return out


class Journal:
    """The text of a job's pieces while they are written, on disk every JOURNAL_EVERY_S seconds
    (atomically), so a server killed mid-piece (SIGKILL, a crash, the power) loses at most that
    much: at the next start the studio turns each journal into pieces marked interrupted. `about`
    is what a record needs (prompt, seed, title, settings ...). Writing is best effort: a full disk
    stops the journal, never the piece."""

    def __init__(self, path: Path, about: dict):
        self.path, self.about = path, about
        self._written = 0.0
        self._broken = False

    def write(self, texts: dict[int, str], force: bool = False) -> None:
        now = time.monotonic()
        if self._broken or (not force and now - self._written < JOURNAL_EVERY_S):
            return
        try:
            write_atomic(self.path, json.dumps({**self.about, "texts": {str(i): t for i, t in texts.items()}}))
        except OSError:
            self._broken = True
        self._written = now

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def read_journal(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("texts"), dict) else None


def _size(folder: Path) -> int:
    """Bytes of the files under `folder` (a file removed meanwhile counts nothing)."""
    total = 0
    for f in folder.rglob("*"):
        try:
            total += f.stat().st_size if f.is_file() else 0
        except OSError:
            continue
    return total


class OutputStore:
    """The outputs directory: sessions by key."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def session(self, key: str) -> Session:
        return Session(self.root, key)

    def unfinished(self) -> list[Path]:
        """Piece folders that never got their record.json (a crash, a kill -9, a full disk) and
        half-written temporary files: nothing lists them, nothing will finish them."""
        if not self.root.is_dir():
            return []
        found = []
        for session in (p for p in self.root.iterdir() if p.is_dir()):
            for piece in session.iterdir():
                if piece.name == JOURNAL_DIR:
                    continue
                if piece.is_dir() and not (piece / RECORD_FILE).is_file():
                    found.append(piece)
                elif piece.is_dir():
                    found += piece.glob(f".{RECORD_FILE}.*")
        return found

    def sweep(self) -> int:
        """Removes what unfinished() finds; run at start-up, when no work is running."""
        gone = self.unfinished()
        for p in gone:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        return len(gone)

    def sessions(self) -> list[Session]:
        return [Session.at(p) for p in sorted(self.root.iterdir()) if p.is_dir()] if self.root.is_dir() else []

    def total_bytes(self) -> int:
        """Bytes of every session's pieces (a walk of the outputs folder: call it seldom)."""
        if not self.root.is_dir():
            return 0
        return sum(_size(p) for p in self.root.iterdir() if p.is_dir())

    def evict(self, over_bytes: int, busy: set[str], idle_s: float) -> tuple[int, int]:
        """Frees at least `over_bytes` by removing pieces, the least recently written or opened
        first, from sessions that are idle: none of `busy` (session ids with work running) and none
        with a piece touched in the last `idle_s` seconds. -> (pieces removed, bytes freed); it may
        free less when the rest belongs to active sessions."""
        if over_bytes <= 0 or not self.root.is_dir():
            return 0, 0
        now, pieces = time.time(), []
        for session in (p for p in self.root.iterdir() if p.is_dir()):  # deleted pieces held for Undo go first
            pieces += [(0.0, r.parent) for r in session.glob(f"{DELETED_DIR}/*/{RECORD_FILE}")]
        for session in (p for p in self.root.iterdir() if p.is_dir() and p.name not in busy):
            records = [(r.stat().st_mtime, r.parent) for r in session.glob(f"*/{RECORD_FILE}") if r.is_file()]
            if records and now - max(t for t, _ in records) > idle_s:
                pieces += records
        removed = freed = 0
        for _, folder in sorted(pieces, key=lambda p: p[0]):  # bounded: each piece once
            if freed >= over_bytes:
                break
            size = _size(folder)
            shutil.rmtree(folder, ignore_errors=True)
            removed, freed = removed + 1, freed + size
        return removed, freed

    def secret(self) -> str:
        """A secret kept in the outputs directory (created once) that Gradio's BrowserState uses to
        scramble the session key in the browser's local storage. Gradio sends it to every page, so
        it hides nothing from someone who has the page: it only keeps the key from being stored in
        plain text. The key itself is what keeps a session private."""
        path = self.root / ".secret"
        if not path.is_file():
            import secrets

            write_atomic(path, secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip()
