"""The period / composer / instrumentation combinations a model was trained on."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from engine.checks import said
from engine.errors import PromptError

NOTAGEN_X_TABLE = "notagen_x_prompts.txt"
MAX_FIELD_CHARS = 200  # a prompt line longer than this is a mistake, not a label


def assets_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "assets"


def check_field(name: str, value: str) -> str:
    """Prompt text becomes model input: ASCII only, one line, not empty."""
    if not isinstance(value, str) or not value.strip():
        raise PromptError(f"{name} is empty: expected text such as 'Baroque', 'Bach, Johann Sebastian' or 'Keyboard'")
    value = value.strip()
    bad = sorted({c for c in value if ord(c) > 127 or c in "\n\r_%" or ord(c) < 32})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        raise PromptError(
            f"{name} {said(value)} contains {shown}: the model reads 7-bit ASCII only, one line, without '_' or '%' "
            "(write accented names without accents, e.g. 'Dvorak, Antonin')")
    if len(value) > MAX_FIELD_CHARS:
        raise PromptError(f"{name} is {len(value)} characters long: expected at most {MAX_FIELD_CHARS}")
    return value


@dataclass(frozen=True)
class Prompt:
    """What a piece is conditioned on; each field is checked once, here (check_field)."""
    period: str
    composer: str
    instrumentation: str

    def __post_init__(self) -> None:
        for name in ("period", "composer", "instrumentation"):
            object.__setattr__(self, name, check_field(name, getattr(self, name)))  # frozen: the stripped text

    def lines(self) -> list[str]:
        """The three metadata lines NotaGen is conditioned on."""
        return [f"%{self.period}\n", f"%{self.composer}\n", f"%{self.instrumentation}\n"]

    def key(self) -> str:
        return f"{self.period}_{self.composer}_{self.instrumentation}"


class PromptTable:
    """Valid combinations, in NotaGen's `Period_Composer_Instrumentation` line format."""

    def __init__(self, prompts: list[Prompt]):
        self.prompts = sorted(set(prompts), key=lambda p: (p.period, p.composer, p.instrumentation))

    def __len__(self) -> int:
        return len(self.prompts)

    def __contains__(self, prompt: Prompt) -> bool:
        return prompt in set(self.prompts)

    @classmethod
    def parse(cls, text: str, source: str = "prompt table") -> "PromptTable":
        prompts = []
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split("_")
            if len(parts) != 3 or not all(p.strip() for p in parts):
                raise PromptError(f"{source} line {n}: expected 'Period_Composer_Instrumentation', got {line!r}")
            prompts.append(Prompt(*(p.strip() for p in parts)))
        return cls(prompts)

    @classmethod
    def load(cls, path: str | Path) -> "PromptTable":
        path = Path(path)
        return cls.parse(path.read_text(encoding="utf-8"), str(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_text("".join(p.key() + "\n" for p in self.prompts), encoding="utf-8")

    @classmethod
    def notagen_x(cls) -> "PromptTable":
        return cls.load(assets_dir() / "prompts" / NOTAGEN_X_TABLE)

    @classmethod
    def for_checkpoint(cls, path: Path, cfg) -> tuple["PromptTable | None", list[str]]:
        """A prompts.txt beside the checkpoint wins; a NotaGen-X-shaped checkpoint gets NotaGen-X's table."""
        beside = path.with_name("prompts.txt")
        if beside.is_file():
            return cls.load(beside), []
        if (cfg.patch_num_layers, cfg.char_num_layers, cfg.hidden_size, cfg.patch_length) == (20, 6, 1280, 1024):
            return cls.notagen_x(), [
                "NotaGen-X/large-sized checkpoint without prompts.txt: using NotaGen-X's table of 112 combinations"]
        return None, [f"{path.name} comes without a prompt table (prompts.txt): any prompt is accepted"]

    def periods(self) -> list[str]:
        return sorted({p.period for p in self.prompts})

    def composers(self, period: str | None = None) -> list[str]:
        return sorted({p.composer for p in self.prompts if period in (None, p.period)})

    def instrumentations(self, period: str | None = None, composer: str | None = None) -> list[str]:
        return sorted({p.instrumentation for p in self.prompts
                       if period in (None, p.period) and composer in (None, p.composer)})

    def nearest(self, prompt: Prompt, n: int = 5) -> list[Prompt]:
        by_key = {p.key().lower(): p for p in self.prompts}
        close = difflib.get_close_matches(prompt.key().lower(), list(by_key), n=n, cutoff=0.0)
        return [by_key[k] for k in close]

    def check(self, prompt: Prompt) -> Prompt:
        """Returns the table's own spelling of `prompt`, or raises with the nearest valid ones."""
        for p in self.prompts:
            if p.key().lower() == prompt.key().lower():
                return p
        near = "; ".join(f"{p.period} / {p.composer} / {p.instrumentation}" for p in self.nearest(prompt))
        raise PromptError(
            f"the model does not know {prompt.period} / {prompt.composer} / {prompt.instrumentation}. "
            f"Nearest valid combinations: {near}. `python -m engine prompts` lists all {len(self)}.")


def known_prompt(prompt: Prompt, table: PromptTable | None) -> tuple[Prompt, list[str]]:
    """The table's spelling of the prompt (refused with the nearest valid ones when the model does
    not know it); a model without a table takes any prompt, with a warning."""
    if table is None:
        return prompt, ["the model has no prompt table: the combination is not checked"]
    return table.check(prompt), []
