"""The page's components as one typed record (Page), and what every tab shows of a piece by
component: a handler returns {component: value} for the components it changes, so nothing is wired
by position. The tabs (webui/tabs/) make the components and wire their handlers; webui/app.py puts
the page together."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from engine.audio.musicgen import KNOWN_MODELS
from engine.errors import CadenzaError
from engine.render.identity import heading, of_edit
from engine.service.pieces import Outcome
from engine.service.studio import Studio
from webui import views
from webui.handlers import servable


class Page:
    """Every component of the page, by name. The tabs' build() functions make them; an attribute
    not declared here cannot be set (a misspelt name fails when the page is built, not later)."""
    # the session: its key and the work area (open piece, unsaved ABC) kept in this browser
    key: gr.BrowserState
    work: gr.BrowserState
    # per page: the open piece and what goes with it
    pages: gr.State
    page_no: gr.State
    piece_id: gr.State
    filled: gr.State  # the prompt lists are filled (the model is ready)
    current: gr.State  # identity() of the open piece
    card_ids: gr.State
    history_ids: gr.State
    picked: gr.State  # the History row selected
    status: gr.Markdown
    tabs: gr.Tabs
    timer: gr.Timer
    loaded: object  # the page-load event (reattaching follows it)
    # Score: the prompt, the controls, the buttons, the music
    period: gr.Dropdown
    composer: gr.Dropdown
    instrumentation: gr.Dropdown
    surprise: gr.Button
    bars: gr.Textbox
    music_key: gr.Textbox
    meter: gr.Textbox
    tempo: gr.Textbox
    variations: gr.Slider
    seed: gr.Textbox
    generate: gr.Button
    stop: gr.Button
    cont: gr.Button
    harmonise: gr.Button
    render: gr.Button
    progress: gr.Markdown
    audio: gr.Audio
    seed_info: gr.Markdown
    again: gr.Button
    live: gr.Textbox  # the ABC being written, engraved by the page's script
    marks: gr.Textbox  # the bars at fault, for the script (views.marks)
    score: gr.HTML
    downloads: gr.File
    notes: gr.HTML
    cards_row: gr.Row
    cards: list  # SimpleNamespace(box, text, audio, open) per variation
    abc: gr.Code
    upload: gr.File
    rewrite_bar: gr.Number
    rewrite_to: gr.Number
    rewrite: gr.Button
    transpose_key: gr.Textbox
    transpose: gr.Button
    printed: gr.HTML
    prev_page: gr.Button
    next_page: gr.Button
    perform_weights: gr.Markdown
    style: gr.Textbox
    perform_model: gr.Dropdown
    perform_seconds: gr.Slider
    perform: gr.Button
    perform_progress: gr.Markdown
    perform_audio: gr.Audio
    perform_files: gr.File
    # the settings sidebar
    temperature: gr.Slider
    top_k: gr.Slider
    top_p: gr.Slider
    bar_retries: gr.Slider
    critic: gr.Checkbox
    max_patches: gr.Slider
    model: gr.Textbox
    repo: gr.Textbox
    repo_file: gr.Textbox
    fetch: gr.Button
    use_model: gr.Button
    # Audio
    a_weights: gr.Markdown
    a_prompt: gr.Textbox
    a_model: gr.Dropdown
    a_duration: gr.Slider
    a_guidance: gr.Slider
    a_top_k: gr.Slider
    a_top_p: gr.Slider
    a_temperature: gr.Slider
    a_seed: gr.Textbox
    a_variations: gr.Slider
    a_melody: gr.Audio
    a_go: gr.Button
    a_stop: gr.Button
    a_progress: gr.Markdown
    a_players: list
    a_pictures: gr.Gallery
    a_files: gr.File
    # History
    history_tab: gr.Tab
    history: gr.Dataframe
    picked_box: gr.Group
    picked_text: gr.Markdown
    picked_audio: gr.Audio
    open_picked: gr.Button
    new_title: gr.Textbox
    rename: gr.Button
    delete_picked: gr.Button
    usage: gr.Markdown
    undelete: gr.Button
    to_delete: gr.Dropdown
    delete: gr.Button
    # System
    sys_line: gr.Markdown
    sys_devices: gr.Dataframe
    sys_models: gr.Dataframe
    refresh: gr.Button
    # what handlers may change, by group (app.build_app lists them once the tabs are built)
    shown: list  # a finished piece on the Score page
    audio_shown: list  # a finished clip on the Audio page
    settings_shown: list  # a piece's prompt and settings (restore)
    perform_shown: list  # a finished performance

    __slots__ = tuple(__annotations__)

    def check(self) -> "Page":
        """Every component declared was made (a tab that forgot one fails here, as the page is built)."""
        missing = [name for name in self.__slots__ if not hasattr(self, name)]
        if missing:
            raise RuntimeError(f"the page was built without {', '.join(missing)}")
        return self


PROMPT_FIELDS = ("period", "composer", "instrumentation")


def page_html(svg: str | None, page: int = 0, pages: int = 0) -> str:
    if not svg:
        return "<p><i>The printed page appears here when the piece is finished.</i></p>"
    label = f"<p>page {page + 1} of {pages}</p>" if pages > 1 else ""
    return f"{label}<div id='score-page'>{svg}</div>"


def history_shown(ui: Page, records: list) -> dict:
    """The History table and the ids of its rows, always together: a row selected after the table
    grew must name its own piece."""
    return {ui.history: views.history_rows(records), ui.history_ids: [r.id for r in records]}


def identity(r, abc: str) -> dict:
    """What the page keeps of the open piece (gr.State): enough to continue, render, transpose or
    write it again as the piece it is, and its ABC's T:/C: lines, which tell whether the editor
    still holds this piece (identity.of_edit)."""
    return {"id": r.id, "title": r.title, "kind": r.kind, "prompt": r.prompt, "seed": r.seed,
            "settings": r.settings, "heading": list(heading(abc))}


def show(ui: Page, studio: Studio, key: str, o: Outcome, siblings: list[Outcome] | None = None) -> dict:
    """Everything the page shows of a finished piece, by component; `siblings`: the variations
    written with it (cards side by side), None to leave the cards as they are."""
    pages = [str(p) for p in o.paths("svg")]
    first = Path(pages[0]).read_text() if pages else None
    wav = o.paths("wav")
    r = o.record
    seed_info = views.seed_line(r) or (
        "" if r.prompt else "This score has no style of its own: Continue and Rewrite write it as the Period, "
                            "Composer and Instrumentation chosen above.")
    shown = {ui.abc: o.abc, ui.live: o.abc, ui.marks: views.marks(r.analysis, o.abc), ui.progress: views.summary(r),
             ui.notes: views.notes(r),
             ui.seed_info: seed_info, ui.again: gr.update(visible=r.seed is not None and r.kind == "composed"),
             ui.printed: page_html(first, 0, len(pages)), ui.pages: pages, ui.page_no: 0,
             ui.audio: gr.update(value=servable(wav[0]) if wav else None, visible=True), ui.downloads: [servable(p) for p in o.downloads()],
             **history_shown(ui, studio.history(key)), ui.piece_id: r.id, ui.current: identity(r, o.abc), ui.work: {"piece": r.id, "draft": None}}
    if siblings is not None:
        shown |= cards(ui, siblings)
    return shown


def cleared(ui: Page) -> dict:
    """The page without a finished piece: what show fills, emptied (a new piece is being written,
    and nothing of the previous one may stay beside it: it is in History)."""
    return {ui.seed_info: "", ui.again: gr.update(visible=False), ui.notes: "", ui.marks: "", ui.printed: page_html(None),
            ui.pages: [], ui.page_no: 0, ui.downloads: None, **cards(ui, []),
            # the old player is hidden, not emptied: emptying it, then giving it the new piece, reloaded
            # the player just after the new piece began to play (the cursor test lost its place)
            ui.audio: gr.update(visible=False)}


def cards(ui: Page, outcomes: list[Outcome]) -> dict:
    """The variations side by side: each card its seed, first bars, player and an Open button."""
    many = len(outcomes) > 1
    shown = {ui.cards_row: gr.update(visible=many), ui.card_ids: [o.record.id for o in outcomes] if many else []}
    for n, card in enumerate(ui.cards):
        o = outcomes[n] if many and n < len(outcomes) else None
        wav = o.paths("wav") if o else []
        shown |= {card.box: gr.update(visible=o is not None),
                  card.text: views.card(o.record, n + 1, o.abc) if o else "",
                  card.audio: servable(wav[0]) if wav else None}
    return shown


def prompt_lists(studio: Studio, spec, prompt) -> tuple | None:
    """The three dropdowns showing `prompt` (a Prompt or a record's dict), each offering what the
    cascade allows; None when the model is not ready or the prompt is not one it knows."""
    p = prompt if not isinstance(prompt, dict) else SimpleNamespace(**{f: prompt.get(f) for f in PROMPT_FIELDS})
    try:
        _, composers, _, instrumentations = studio.choices(spec or None, p.period, p.composer)
        periods = studio.prompts(spec or None).periods()
    except CadenzaError:
        return None
    if p.period not in periods or p.composer not in composers or p.instrumentation not in instrumentations:
        return None
    return (gr.update(choices=periods, value=p.period), gr.update(choices=composers, value=p.composer),
            gr.update(choices=instrumentations, value=p.instrumentation))


def restore(ui: Page, studio: Studio, spec, record, with_length: bool = False) -> dict:
    """The settings a piece was written with, back in the page (opening it from History, Write
    this again): its prompt in the lists, its sampling, key, metre and tempo; its length only to
    write it again (Continue needs a longer one)."""
    out = dict(zip((ui.period, ui.composer, ui.instrumentation), prompt_lists(studio, spec, record.prompt) or ()))
    st = record.settings or {}
    for comp, name in ((ui.temperature, "temperature"), (ui.top_k, "top_k"), (ui.top_p, "top_p"),
                       (ui.bar_retries, "bar_retries"), (ui.critic, "critic"), (ui.max_patches, "max_patches")):
        if name in st:
            out[comp] = st[name]
    controls = st.get("controls") or {}
    text = lambda v: "" if v in (None, 0) else str(v)  # noqa: E731 - the boxes are text: empty = the model's
    out |= {ui.music_key: text(controls.get("key")), ui.meter: text(controls.get("meter")),
            ui.tempo: text(controls.get("tempo")), ui.bars: text(controls.get("bars")) if with_length else ""}
    return out


def edited(text, current) -> tuple[str | None, dict | None]:
    """(title, prompt) of the score in the editor: the open piece's while it is still that piece,
    its own once another score was pasted over it (identity.of_edit)."""
    if not isinstance(current, dict) or not isinstance(text, str):
        return None, None
    title = current.get("title") if isinstance(current.get("title"), str) else None
    prompt = current.get("prompt") if isinstance(current.get("prompt"), dict) else None
    opened = tuple(current.get("heading") or (None, None))
    return of_edit(text, opened, title, prompt)


def weights_note(studio: Studio, spec: str, melody: bool) -> str:
    """Said before anyone presses a button: whether MusicGen's weights are on this server."""
    missing = studio.audio_weights_missing(spec, melody)
    return "" if missing is None else f"**MusicGen is not set up on this server.** {missing}"


def musicgen_choices(studio: Studio, first: str, melody: bool) -> list[str]:
    """The server's MusicGen model, then the known ones this server can load (in its cache, or
    downloadable when the admin allowed it)."""
    def offered(m: str) -> bool:
        try:
            studio.policy.musicgen(m)
            return True
        except CadenzaError:
            return False

    known = [m for m in KNOWN_MODELS if "melody" in m or not melody]
    return list(dict.fromkeys([first, *(m for m in known if offered(m))]))
