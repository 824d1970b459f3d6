"""Why a piece or a clip stopped: one type for every job, written to its record as its value."""
from enum import StrEnum


class StopReason(StrEnum):
    # a score (engine.symbolic.piece)
    EOS = "eos"  # the model ended it
    MAX_PATCHES = "max_patches"  # the request's length bound
    MAX_SECONDS = "max_seconds"  # its time bound
    MAX_CHARS = "max_chars"  # NotaGen's bound on a piece's text
    CONTEXT = "context"  # one line (or the header) alone fills the model's context
    PASSAGE = "passage"  # the bars asked for were written (a passage rewritten inside a piece)
    # a clip (engine.audio.musicgen)
    DONE = "done"  # every window made
    # any job
    CANCELLED = "cancelled"  # Stop was pressed
    # kept by the service without its end (engine.service.studio)
    CLOSED = "closed"  # the page was closed or the request cancelled
    SHUTDOWN = "shutdown"  # the server was shut down
    INTERRUPTED = "interrupted"  # the server died while it was written (kept from its journal)
    REPLICA_LOST = "replica_lost"  # the Ray Serve replica writing it died (kept from the text streamed)


FINISHED = frozenset({StopReason.EOS, StopReason.PASSAGE, StopReason.DONE})  # ended as asked, not cut short
