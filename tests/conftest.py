import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.symbolic.config import NotaGenConfig  # noqa: E402
from engine.symbolic.model import NotaGenModel  # noqa: E402
from engine.requests import ComposeRequest  # noqa: E402
from engine.symbolic.prompts import Prompt  # noqa: E402

SHARED = ROOT.parent / "shared"
NOTAGEN_SHARED = SHARED / "notagen"
BACH = Prompt("Baroque", "Bach, Johann Sebastian", "Choral")


def bach(**fields) -> ComposeRequest:
    """A compose request for BACH's prompt."""
    return ComposeRequest(BACH.period, BACH.composer, BACH.instrumentation, **fields)


# Tiny random-weight sizes: (patch_length, patch layers, char layers, hidden)
TINY_SIZES = [(64, 2, 1, 128), (32, 3, 2, 192), (48, 1, 1, 64)]


def tiny_model(patch_length=64, patch_layers=2, char_layers=1, hidden=128, seed=0, std=0.2) -> NotaGenModel:
    """Random weights drawn like the reference checkpoint (N(0, 0.2)): peaked enough that greedy
    decoding is well away from ties."""
    cfg = NotaGenConfig(patch_length=patch_length, patch_num_layers=patch_layers, char_num_layers=char_layers,
                        hidden_size=hidden)
    return NotaGenModel(cfg).init_weights(std=std, seed=seed).eval()


def reference_prefix() -> Path:
    return Path(os.environ.get("NOTAGEN_REFERENCE", str(NOTAGEN_SHARED / "notagen_tiny_reference")))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def free_port() -> int:
    """A free localhost port for a server under test."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
