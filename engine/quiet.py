"""What abctoolkit's converters may do inside a server: print (caught per thread where they print
it) and read files named in a score (never).

abc2xml, xml2abc and abctoolkit's duration/utils helpers report problems by printing (to
stdout or stderr). Swapping sys.stdout to catch that is process-wide: in a server, concurrent
requests would overlap their redirects and one could leave sys.stdout pointing at a dead buffer.
Instead their own `info` and `print` are replaced, once, by a function that adds the line to the
calling thread's capture (or drops it to the debug log when nothing captures).

abc2xml also reads any file a score names with `%%abc-include` / `I:abc-include` and puts what it
cannot parse into its messages, which reach the user: a score could read the server's files. Those
lines are dropped (drop_includes) before every conversion and in abc2xml itself."""
from __future__ import annotations

import logging
import re
import threading
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger("cadenza.converters")
_local = threading.local()
_patched = threading.Event()
_patch_lock = threading.Lock()


def _say(*args, sep: str = " ", end: str = "\n", file=None, flush: bool = False) -> None:  # noqa: ARG001
    text = sep.join(str(a) for a in args)
    lines = getattr(_local, "lines", None)
    if lines is not None:
        lines.extend(text.splitlines() or [""])
    else:
        log.debug("%s", text)


INCLUDE = re.compile(r"^[ \t]*(%%|I:)[ \t]*abc-include\b.*(\n|$)", re.M)  # the whole line: a blank one would end the tune


def drop_includes(abc_text: str) -> tuple[str, list[str]]:
    """(the score without its abc-include lines, a warning if there were any)."""
    text, n = INCLUDE.subn("", abc_text)
    return text, [f"ignored {n} abc-include line(s): a score cannot read files on the server"] if n else []


def _info(s, warn=1) -> None:  # abc2xml's and xml2abc's own reporting function
    _say((warn and "-- " or "") + str(s))


def _silence() -> None:
    """Points the converters' reporting at _say (idempotent; imports abctoolkit on first use)."""
    if _patched.is_set():
        return
    with _patch_lock:
        if _patched.is_set():
            return
        from abctoolkit import abc2xml, duration, utils, xml2abc

        abc2xml.info = _info
        xml2abc.info = _info
        abc2xml.expand_abc_include = lambda text: drop_includes(text)[0]
        for module in (abc2xml, xml2abc, duration, utils):
            module.print = _say  # a module global shadows the builtin for that module's code only
        _patched.set()


@contextmanager
def captured() -> Iterator[list[str]]:
    """The lines the converters report while the block runs in this thread."""
    _silence()
    lines: list[str] = []
    outer = getattr(_local, "lines", None)
    _local.lines = lines
    try:
        yield lines
    finally:
        _local.lines = outer
        if outer is not None:
            outer.extend(lines)
