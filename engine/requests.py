"""What a user asks the engines for, as values checked once, when they are made.

A request holds the defaults (the page, the HTTP API and the CLI read theirs from these fields) and
the checks (in __post_init__, as transformers' GenerationConfig validates itself): a bad field is
refused there, with a message that names it, and never looked at again. A request does not change
after that; update() makes a new one (and checks it). The seed is None until seeded() draws one
(engine.checks.draw_seed, the only place a seed is drawn); the seed a result reports is the one used.

    ComposeRequest -> api.compose_stream -> PatchEvent ... Composition (one per variation)
    AudioRequest   -> api.audio_stream   -> AudioProgress ... AudioOutput
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from engine.audio.musicgen import MELODY_SUFFIXES, AudioSettings, check_prompt
from engine.checks import SEED_LIMIT, check_seed, draw_seed, real, whole, with_checked
from engine.errors import SettingsError
from engine.symbolic.controls import Controls, fit_prefix
from engine.symbolic.passage import Passage
from engine.symbolic.prompts import Prompt
from engine.symbolic.sampling import SamplingSettings
from engine.symbolic.search import MAX_CANDIDATES, SEARCH_BY

_COMPOSE_NESTED = {"sampling": tuple(f.name for f in dataclasses.fields(SamplingSettings)),
                   "controls": tuple(f.name for f in dataclasses.fields(Controls))}
MAX_VARIATIONS = 64  # pieces in one batch, at most (a server sets its own, lower, limit)


def _set(obj, name: str, value) -> None:
    object.__setattr__(obj, name, value)  # frozen dataclasses: a checked value replaces the raw one


def _update(request, nested: dict[str, tuple[str, ...]], changes: dict):
    """dataclasses.replace that also takes the nested settings' fields by name (temperature=1.0,
    key="D"): `nested` maps a field holding settings to the names of its own fields."""
    inner = {name: {k: changes.pop(k) for k in fields if k in changes} for name, fields in nested.items()}
    known = {f.name for f in dataclasses.fields(request)}
    unknown = sorted(set(changes) - known)
    if unknown:
        every = known.union(*nested.values())
        raise SettingsError(f"unknown setting(s) {', '.join(unknown)}: expected some of {', '.join(sorted(every))}")
    for name, values in inner.items():
        if values:
            changes[name] = dataclasses.replace(changes.get(name, getattr(request, name)), **values)
    return dataclasses.replace(request, **changes)


@dataclass(frozen=True)
class ComposeRequest:
    """One prompt, written `variations` times in one batch (variation i uses seed + i)."""
    period: str
    composer: str
    instrumentation: str
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    seed: int | None = None  # None: drawn by seeded(), and reported with every piece
    variations: int = 1
    max_patches: int = 1024  # patches per piece at most (a patch is 16 characters)
    max_seconds: float = 1200.0  # wall-clock bound per piece
    bar_retries: int = 16  # times a bar whose voices disagree in length is written again (0: NotaGen's own)
    header_retries: int = 64  # times a header with an unusual number of voices for the prompt is written again
    critic: bool = True  # the musical critic judges bars of several voices (False: only the bar rules)
    # candidates written at once for each bar the rules check, the best kept (1: one at a time, then
    # retries); the rows of the batch a piece holds. Searching by voice, the voices above a line's
    # lowest write half as many (engine.symbolic.search.round_size). 4 was measured better and faster
    # than one at a time, 8 better again, and 16 (8 of each upper voice) better again, as fast: fewer
    # rounds written again, on a model this small (bench.notagen_quality --musical)
    search: int = 16
    # what a round of the search writes: "voice", each voice's bar of a line in turn, the best kept
    # before the next voice is written over it (measured: more full chords and cadences than "line",
    # each candidate a whole line; bench.notagen_quality --musical)
    search_by: str = "voice"
    prefix: str = ""  # text in the model's format to continue (api.continuation_prefix makes it from ABC)
    controls: Controls = field(default_factory=Controls)  # length in bars, key, metre, tempo (None: the model's)
    # bars inside the piece of `prefix` written anew, the bars after them kept (api.passage_request
    # makes it): the variations are its candidates, and one piece comes back, the best joined
    passage: Passage | None = None
    # a melody to harmonise: the first voice's bar of every line, forced, the other voices the model's
    # (api.harmonise_request makes it, with the melody's key, metre, unit and length in the controls)
    melody: tuple[str, ...] = ()
    prompt: Prompt = field(init=False, repr=False, compare=False)  # the three fields, checked (made here)

    def __post_init__(self) -> None:
        if not isinstance(self.sampling, SamplingSettings):
            raise SettingsError(f"sampling must be SamplingSettings, got {type(self.sampling).__name__}")
        if not isinstance(self.controls, Controls):
            raise SettingsError(f"controls must be Controls (bars, key, meter, tempo), got {type(self.controls).__name__}")
        _set(self, "seed", check_seed(self.seed))
        _set(self, "variations", whole(self.variations, "variations", 1, MAX_VARIATIONS))
        _set(self, "max_patches", whole(self.max_patches, "maximum length (patches)", 1, 1_000_000))
        _set(self, "max_seconds", real(self.max_seconds, "maximum time (seconds)", 0, 86_400, above=True))
        _set(self, "bar_retries", whole(self.bar_retries, "bar retries", 0, 32))
        _set(self, "header_retries", whole(self.header_retries, "header retries", 0, 64))
        _set(self, "search", whole(self.search, "search (candidates per bar)", 1, MAX_CANDIDATES))
        if self.search_by not in SEARCH_BY:
            raise SettingsError(f"search by must be one of {', '.join(SEARCH_BY)} (what a candidate is: a whole "
                                f"bar of every voice, or one voice's bar), got {self.search_by!r}")
        if self.seed is not None and self.seed + self.variations > SEED_LIMIT:
            raise SettingsError(f"seed {self.seed} leaves no room for {self.variations} variations (seed + i): "
                                f"seeds go up to 2**63-1")
        # the prompt last: a hand-made client that sends no prompt still learns what else is wrong
        _set(self, "prompt", Prompt(self.period, self.composer, self.instrumentation))
        for name in ("period", "composer", "instrumentation"):
            _set(self, name, getattr(self.prompt, name))
        if not isinstance(self.critic, bool):
            raise SettingsError(f"critic must be on (True) or off (False), got {self.critic!r}")
        if not isinstance(self.prefix, str):
            raise SettingsError("the text to continue must be text in the model's format")
        bad = sorted({c for c in self.prefix if ord(c) > 127})
        if bad:
            raise SettingsError(f"the text to continue contains non-ASCII characters {bad[:5]}: the model reads ASCII only")
        # the score to continue under the controls: renumbered to the length asked, its key and metre
        # checked against those asked (controls.fit_prefix; it is the same text when fitted again)
        _set(self, "prefix", fit_prefix(self.prefix, self.controls))
        if not isinstance(self.melody, tuple) or not all(isinstance(m, str) and m.isascii() for m in self.melody):
            raise SettingsError("the melody to harmonise must be its bars in the model's format (ASCII text)")
        if self.melody and (self.prefix or self.controls.bars != len(self.melody)):
            raise SettingsError(f"a melody of {len(self.melody)} bars is harmonised as a new piece of as many bars: "
                                f"no score to continue, a length of {len(self.melody)}")
        if self.passage is not None and not isinstance(self.passage, Passage):
            raise SettingsError(f"passage must be a Passage (the bars to rewrite), got {type(self.passage).__name__}")

    def update(self, **changes) -> "ComposeRequest":
        """A new request with these fields changed (sampling's too: temperature=1.0), checked."""
        return _update(self, _COMPOSE_NESTED, changes)

    def seeded(self) -> "ComposeRequest":
        return self if self.seed is not None else with_checked(self, seed=draw_seed())

    def within(self, max_patches: int, max_variations: int, max_seconds: float,
               max_rows: int = MAX_CANDIDATES) -> "ComposeRequest":
        """A server's own limits (lower than the engine's): refused with the server's numbers; the
        time bound is the server's when the request's is longer, and so is the search when its
        candidates would not fit the server's batch (`max_rows`: each candidate is a row)."""
        if self.max_patches > max_patches:
            raise SettingsError(f"maximum length (patches) must be from 1 to {max_patches:,} on this server, "
                                f"got {self.max_patches:,}")
        if self.variations > max_variations:
            raise SettingsError(f"variations must be from 1 to {max_variations} on this server, got {self.variations}")
        request = self if self.search <= max_rows else with_checked(self, search=max(1, max_rows))
        return request if self.max_seconds <= max_seconds else with_checked(request, max_seconds=float(max_seconds))

    def settings(self) -> dict:
        """How the pieces were written, for their records (the seed is recorded per piece)."""
        return {**dataclasses.asdict(self.sampling), "max_patches": self.max_patches,
                "bar_retries": self.bar_retries, "variations": self.variations, "critic": self.critic,
                "search": self.search, "search_by": self.search_by,
                "controls": self.controls.to_dict()} | (
                    {"rewritten": [self.passage.first, self.passage.last]} if self.passage else {}) | (
                    {"harmonised_bars": len(self.melody)} if self.melody else {})


@dataclass(frozen=True)
class AudioRequest:
    """A text prompt for MusicGen, optionally following a melody file, or a score to perform in
    the prompt's style (a melody model plays the score's SoundFont rendering again)."""
    prompt: str
    settings: AudioSettings = field(default_factory=AudioSettings)
    melody: Path | None = None  # an audio file the music follows (melody models)
    score: str | None = None  # ABC to perform; the prompt is then its style

    def __post_init__(self) -> None:
        _set(self, "prompt", check_prompt(self.prompt))
        if not isinstance(self.settings, AudioSettings):
            raise SettingsError(f"settings must be AudioSettings, got {type(self.settings).__name__}")
        if self.melody is not None:
            path = Path(self.melody)
            if path.suffix.lower() not in MELODY_SUFFIXES:
                raise SettingsError(f"{path.name} is not an audio file: expected {', '.join(MELODY_SUFFIXES)}")
            _set(self, "melody", path)
        if self.score is not None and (not isinstance(self.score, str) or not self.score.strip()):
            raise SettingsError("there is no score to perform: compose, write or upload one first")

    @property
    def follows_melody(self) -> bool:
        """Needs a melody model: a melody file, or a score whose rendering becomes the melody."""
        return self.melody is not None or self.score is not None

    @property
    def kind(self) -> str:
        return "performed" if self.score is not None else "audio"

    def update(self, **changes) -> "AudioRequest":
        return _update(self, {"settings": tuple(f.name for f in dataclasses.fields(AudioSettings))}, changes)

    def seeded(self) -> "AudioRequest":
        return with_checked(self, settings=self.settings.seeded())

    def within(self, max_seconds: float, max_upload_mb: float) -> "AudioRequest":
        """A server's own limits: the duration, and the melody file's size."""
        if self.settings.duration > max_seconds:
            raise SettingsError(f"duration must be from 0.5 to {max_seconds:g} seconds on this server, "
                                f"got {self.settings.duration:g}")
        m = self.melody
        if m is not None and m.is_file() and m.stat().st_size > max_upload_mb * 2**20:
            raise SettingsError(f"{m.name} is {m.stat().st_size / 2**20:.1f} MB: uploads are limited to "
                                f"{max_upload_mb:g} MB")
        return self
