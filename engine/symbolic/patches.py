"""Text <-> patches, exactly as NotaGen cuts ABC into 16-character patches.

Metadata lines are cut line by line; the tune body is cut bar by bar. A piece of text whose length
is not a multiple of the patch size ends with eos; the last bar of a piece still being written
does not (it is continued by the character decoder).
"""
from __future__ import annotations

import re

from engine.symbolic.config import BOS_ID, EOS_ID, PAD_ID

PATCH_SIZE = 16
BAR_DELIMITERS = ["|:", "::", ":|", "[|", "||", "|]", "|"]
BAR_SPLIT = re.compile("(" + "|".join(map(re.escape, BAR_DELIMITERS)) + ")")


def bos_patch(patch_size: int = PATCH_SIZE) -> list[int]:
    return [BOS_ID] * (patch_size - 1) + [EOS_ID]


def is_eos_patch(ids: list[int]) -> bool:
    """NotaGen's end-of-piece patch starts with bos then eos."""
    return len(ids) >= 2 and ids[0] == BOS_ID and ids[1] == EOS_ID


def split_bars(lines: list[str]) -> list[str]:
    """Each line cut after every barline; a trailing piece without a voice marker (the newline)
    stays with the bar before it. (NotaGen's version drops the rest of the piece on a line holding a
    lone barline; this one keeps it.)"""
    bars: list[str] = []
    for line in lines:
        parts = [p for p in BAR_SPLIT.split(line) if p]
        if len(parts) <= 1:
            bars += parts
            continue
        if parts[0] in BAR_DELIMITERS:
            line_bars = ["".join(parts[i:i + 2]) for i in range(0, len(parts), 2)]
        else:
            line_bars = [parts[0]] + ["".join(parts[i:i + 2]) for i in range(1, len(parts), 2)]
        if len(line_bars) > 1 and "V" not in line_bars[-1]:
            last = line_bars.pop()
            line_bars[-1] += last
        bars += line_bars
    return bars


def split_patches(text: str, patch_size: int = PATCH_SIZE, generate_last: bool = False) -> list[str]:
    if not generate_last and len(text) % patch_size:
        text += chr(EOS_ID)
    return [text[i:i + patch_size] for i in range(0, len(text), patch_size)]


def to_ids(patch: str, patch_size: int = PATCH_SIZE, pad: bool = True) -> list[int]:
    ids = [ord(c) for c in patch]
    return ids + [PAD_ID] * (patch_size - len(ids)) if pad else ids


def patch_text(ids: list[int]) -> str:
    """The characters of a patch up to its eos (NotaGen's patch2chars)."""
    out = []
    for i in ids:
        if i == EOS_ID:
            break
        out.append(chr(i))
    return "".join(out)


def prompt_patches(lines: list[str], patch_size: int = PATCH_SIZE) -> list[list[int]]:
    """bos patch, then each metadata line cut into patches, padded."""
    patches = [bos_patch(patch_size)]
    for line in lines:
        patches += [to_ids(p, patch_size) for p in split_patches(line, patch_size)]
    return patches


def split_tunebody(text: str) -> tuple[list[str], list[str]]:
    """Lines of text, each keeping its newline, divided at the first tune-body line ([r:..] or [V:..])."""
    lines = text.splitlines(keepends=True)
    lines = [ln for ln in lines if ln.strip("\n")]
    for i, line in enumerate(lines):
        if line.startswith("[r:") or line.startswith("[V:"):
            return lines[:i], lines[i:]
    return lines, []


def encode_for_generation(metadata: list[str], tunebody: list[str], patch_size: int = PATCH_SIZE
                          ) -> tuple[list[list[int]], list[int]]:
    """NotaGen's encode_generate: (full patches, partial last patch). The partial patch is the
    unfinished end of the last bar; the character decoder continues it."""
    patches = [bos_patch(patch_size)]
    for line in metadata:
        patches += [to_ids(p, patch_size) for p in split_patches(line, patch_size)]
    bars = split_bars(tunebody)
    for i, bar in enumerate(bars):
        patches += [to_ids(p, patch_size, pad=False) for p in split_patches(bar, patch_size, generate_last=i == len(bars) - 1)]
    tail: list[int] = []
    if patches and len(patches[-1]) < patch_size and EOS_ID not in patches[-1]:
        tail = patches.pop()
    full = [p + [PAD_ID] * (patch_size - len(p)) for p in patches]
    return full, tail
