"""What every handler of the page and of the scripts' endpoints shares: the one session check,
how a refusal reaches the page (a notice, the page kept) or a script (an error), and the files
handed to browsers (copied where Gradio serves them, swept when old)."""
from __future__ import annotations

import functools
import html
import inspect
import logging
import shutil
import tempfile
import time
from pathlib import Path

import gradio as gr

from engine.errors import CadenzaError
from engine.store import valid_key
from engine.service.policy import public
from webui.guard import trim_folder

log = logging.getLogger("cadenza.web")
NO_SESSION = "this page has no session yet: reload it"
NOTICE_S = 20  # seconds a refusal stays on screen: long enough to read, then it uncovers the page


def refused(message) -> str:
    """A refused request: one log line (no traceback) and the words a client may read."""
    text = public(str(message))
    log.info("refused: %s", text[:300])
    return text


def fail(e: Exception):
    """Bad input or a failed step: a clear message for the caller; the server goes on."""
    raise gr.Error(refused(e), duration=None, print_exception=False)


def keep_page(message) -> dict:
    """In the page, a failed step says why in a notice and changes nothing: the ABC being edited,
    the score and the downloads already shown all stay (one skip() leaves every output as it was)."""
    gr.Warning(html.escape(refused(message)), duration=NOTICE_S)  # notices are HTML; user text is not
    return gr.skip()


def with_session(fn=None, *, api: bool = False, errors: tuple = (CadenzaError,)):
    """The one session check, for a handler whose first argument is the session key. Without a
    valid key, or when the step is refused (`errors`), the page shows a notice and keeps what it
    shows; an API caller (api=True) gets the message as its error. Generators stay generators
    (Gradio streams them)."""
    if fn is None:
        return functools.partial(with_session, api=api, errors=errors)

    def refuse(message):
        if api:
            fail(message)
        return keep_page(message)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def steps(key, *args):
            if not valid_key(key):
                yield refuse(NO_SESSION)
                return
            try:
                yield from fn(key, *args)
            except errors as e:
                yield refuse(e)
        return steps

    @functools.wraps(fn)
    def step(key, *args):
        if not valid_key(key):
            return refuse(NO_SESSION)
        try:
            return fn(key, *args)
        except errors as e:
            return refuse(e)
    return step


SERVE_DIR = "cadenza-serve"  # under the temp folder: copies of outputs kept elsewhere, deleted with Gradio's cache


def servable(path: Path) -> str:
    """Gradio copies returned files into its cache from the working or temp directory only; an
    outputs directory elsewhere is copied to a temp folder first (never added to allowed_paths,
    which would make every session's files fetchable by URL)."""
    p = str(path.resolve())
    if p.startswith(str(Path.cwd().resolve())) or p.startswith(tempfile.gettempdir()):
        return p
    out = Path(tempfile.mkdtemp(prefix="f-", dir=serve_dir())) / path.name
    shutil.copy2(path, out)
    return str(out)


def serve_dir() -> Path:
    folder = Path(tempfile.gettempdir()) / SERVE_DIR
    folder.mkdir(exist_ok=True)
    return folder


def sweep_served(max_age_s: float) -> int:
    """Deletes the copies servable made that are older than max_age_s (Gradio has its own copy by then)."""
    folder, now, gone = Path(tempfile.gettempdir()) / SERVE_DIR, time.time(), 0
    for p in folder.iterdir() if folder.is_dir() else ():
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
                gone += 1
        except OSError:
            continue
    return gone


def trim_served(max_bytes: int) -> int:
    """Gradio's cache of files served to browsers (and our copies for it) under --cache-max-gb,
    the oldest first: a browser fetching many big pieces could otherwise fill the disk within
    --cache-hours, outside any session's quota."""
    from gradio.utils import get_upload_folder

    gone = 0
    for folder in (Path(get_upload_folder()), Path(tempfile.gettempdir()) / SERVE_DIR):
        removed, freed = trim_folder(folder, max_bytes)
        if removed:
            log.warning("Gradio's cache over %.1f GB: removed its %d oldest file(s), %.0f MB", max_bytes / 2**30,
                        removed, freed / 2**20)
        gone += removed
    return gone


def by_name(ui, fn):
    """A handler of a set of inputs: Gradio calls it with one dict {component: value}; -> fn(key,
    values), the session key first as with_session expects. (Not functools.wraps: Gradio reads the
    signature, and this one takes the one dict.)"""
    if inspect.isgeneratorfunction(fn):
        def stream(values: dict):
            yield from fn(values.get(ui.key), values)
        stream.__name__ = fn.__name__
        return stream

    def call(values: dict):
        return fn(values.get(ui.key), values)
    call.__name__ = fn.__name__
    return call
