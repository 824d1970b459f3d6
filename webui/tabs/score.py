"""The Score tab: the prompt and the controls, Generate / Stop / Continue / Rewrite / Write this again,
the music engraved as it is written, its player, downloads, variations, the ABC to edit, upload,
transpose and the printed pages; Perform with MusicGen's form (its handler: webui/tabs/audio.py)."""
from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import gradio as gr

from engine.api import SCORE_SUFFIXES
from engine.errors import CadenzaError, SettingsError
from engine.service.pieces import Progress
from engine.service.studio import Studio
from engine.settings import ServerSettings
from engine.store import valid_key
from webui import page, views
from webui.forms import compose_request
from webui.handlers import by_name, keep_page, with_session
from webui.page import Page

FOLLOW_S = 3 * 3600.0  # a page follows a piece being written at most this long (a reload follows it again)

# The page is updated at most this often while a piece is written (each update is the whole piece so
# far: the editor and the engraving redo it all). Every patch, a chorale took 4x as long on 2 cores.
UPDATE_GAP_S = 0.5

# Runs in the browser as Generate, Continue, Rewrite or Write this again is pressed: the music
# being written comes into view (the inputs go on unchanged).
TO_THE_MUSIC = ("(...args) => { const s = document.getElementById('status'); "
                "if (s) s.scrollIntoView({block: 'start', behavior: 'smooth'}); return args; }")


def build(ui: Page, config: ServerSettings, studio: Studio) -> None:
    """The Score tab: the prompt and the controls a composer sets each time, the buttons, then the
    music in the middle (engraved as it is written), its player, downloads and variations, then
    the ABC to edit. The settings set once live in the sidebar (webui/tabs/settings.py)."""
    with gr.Tab("Score", id="score"):
        with gr.Row(equal_height=True):
            ui.period = gr.Dropdown(label="Period", choices=[], interactive=True)
            # names are long ("Bach, Johann Sebastian"): twice the room, so that 820 px shows them whole
            ui.composer = gr.Dropdown(label="Composer", choices=[], interactive=True, scale=2)
            ui.instrumentation = gr.Dropdown(label="Instrumentation", choices=[], interactive=True)
            ui.surprise = gr.Button("Surprise me", scale=0, min_width=120)
        with gr.Row(equal_height=True):  # text boxes: empty means the model decides (a number box shows 0)
            ui.bars = gr.Textbox(value="", label="Length in bars", placeholder="the model's length", min_width=130)
            ui.music_key = gr.Textbox(value="", label="Key", placeholder="the model's (D, Bb, F#m)", min_width=130)
            ui.meter = gr.Textbox(value="", label="Metre", placeholder="the model's (3/4, 6/8)", min_width=130)
            ui.tempo = gr.Textbox(value="", label="Tempo (quarter =)", placeholder="the model's tempo", min_width=130)
            # (a slider needs two ends: a server allowing one variation shows it fixed at 1)
            ui.variations = gr.Slider(1, max(2, config.max_variations), value=1, step=1, label="Variations",
                                      min_width=200, interactive=config.max_variations > 1)
            ui.seed = gr.Textbox(value="", label="Seed", placeholder="random", min_width=130)
        with gr.Row():
            ui.generate = gr.Button("Generate", variant="primary")
            ui.stop = gr.Button("Stop", variant="secondary")
            ui.cont = gr.Button("Continue this score")
            ui.harmonise = gr.Button("Harmonise this melody")
            ui.render = gr.Button("Render my edits")
        ui.progress = gr.Markdown("", elem_id="status")
        with gr.Row():  # the player, the seed and Write this again, right above the music
            ui.audio = gr.Audio(label="Listen", type="filepath", interactive=False, elem_id="score-player", scale=3,
                                min_width=360)
            with gr.Column(scale=2, min_width=300):
                ui.seed_info = gr.Markdown("")
                ui.again = gr.Button("Write this again", visible=False, size="md")
        ui.live = gr.Textbox(value="", elem_id="live-abc", show_label=False, container=False, lines=1)
        # the bars at fault in the musical check, for the score (views.marks); hidden like live-abc
        ui.marks = gr.Textbox(value="", elem_id="score-marks", show_label=False, container=False, lines=1)
        ui.score = gr.HTML(views.LIVE_SCORE_HTML, elem_id="score")
        with gr.Row():
            ui.downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, height=200,
                                   min_width=360)
            ui.notes = gr.HTML("", min_width=300)
        with gr.Row(visible=False) as ui.cards_row:
            ui.cards = []
            for n in range(config.max_variations):
                with gr.Column(visible=False, min_width=280) as box:
                    card = SimpleNamespace(box=box, text=gr.HTML(""),
                                           audio=gr.Audio(type="filepath", interactive=False, show_label=False),
                                           open=gr.Button(f"Open variation {n + 1}", size="sm"))
                ui.cards.append(card)
        with gr.Accordion("The score as ABC: edit, continue, rewrite, transpose, upload", open=True):
            with gr.Row():
                ui.abc = gr.Code(label="ABC (editable)", language=None, interactive=True, lines=12, max_lines=30,
                                 wrap_lines=True, scale=3)
                with gr.Column(scale=1, min_width=260):
                    ui.upload = gr.File(label="Upload a score (ABC, MusicXML, MXL) or a MIDI file", type="filepath",
                                        file_types=list(SCORE_SUFFIXES))
                    with gr.Row():
                        # a click on the score puts the bar's number here (webui/static/cadenza-score.js)
                        ui.rewrite_bar = gr.Number(value=1, precision=0, minimum=0, label="From bar (click one)",
                                                   min_width=80, elem_id="rewrite-bar")
                        # shift-click: the passage's last bar; the bars after it are kept (empty: to the end)
                        ui.rewrite_to = gr.Number(value=None, precision=0, minimum=0, label="To bar (shift-click)",
                                                  min_width=80, elem_id="rewrite-to")
                    ui.rewrite = gr.Button("Rewrite these bars (a new seed)", min_width=150)
                    with gr.Row():
                        ui.transpose_key = gr.Textbox(value="", label="Key", placeholder="D, Bb, F#m", min_width=80)
                        ui.transpose = gr.Button("Transpose to this key", min_width=150)
        with gr.Accordion("The printed page (as in the PDF)", open=False):
            ui.printed = gr.HTML(page.page_html(None))
            with gr.Row():
                ui.prev_page = gr.Button("< page", scale=0)
                ui.next_page = gr.Button("page >", scale=0)
        with gr.Accordion("Perform with MusicGen", open=False):
            gr.Markdown("The score above is played with the SoundFont and given to a MusicGen melody model "
                        "as the melody; it plays the piece again in the style you describe.")
            ui.perform_weights = gr.Markdown(page.weights_note(studio, config.melody_model, melody=True))
            with gr.Row():
                ui.style = gr.Textbox(label="Style", value="string quartet, warm hall", scale=2)
                ui.perform_model = gr.Dropdown(label="Melody model", value=config.melody_model, allow_custom_value=True,
                                               choices=page.musicgen_choices(studio, config.melody_model, melody=True))
                ui.perform_seconds = gr.Slider(1, config.max_audio_seconds, value=min(30, config.max_audio_seconds),
                                               step=1, label="At most (seconds)")
            ui.perform = gr.Button("Perform with MusicGen")
            ui.perform_progress = gr.Markdown("")
            ui.perform_audio = gr.Audio(label="Performance", type="filepath", interactive=False)
            ui.perform_files = gr.File(label="Performance downloads", file_count="multiple", interactive=False)


def wire_compose(ui: Page, config: ServerSettings, studio: Studio) -> None:
    """Generate, Continue, Rewrite, Write this again, Stop and the variation cards."""
    # the form a piece is written from, read by name: {component: value} (Gradio's set inputs)
    form = {ui.key, ui.model, ui.period, ui.composer, ui.instrumentation, ui.temperature, ui.top_k, ui.top_p,
            ui.seed, ui.max_patches, ui.variations, ui.bar_retries, ui.critic, ui.bars, ui.music_key, ui.meter,
            ui.tempo}

    def request_of(v: dict):
        return compose_request(v[ui.period], v[ui.composer], v[ui.instrumentation], temperature=v[ui.temperature],
                               top_k=v[ui.top_k], top_p=v[ui.top_p], seed=v[ui.seed], max_patches=v[ui.max_patches],
                               variations=v[ui.variations], bar_retries=v[ui.bar_retries], critic=bool(v[ui.critic]),
                               bars=v[ui.bars], music_key=v[ui.music_key], meter=v[ui.meter], tempo=v[ui.tempo])

    def write(k, v: dict, cont_abc=None, rewrite_from=None, title=None, rewrite_to=None, melody=None):
        spec = v[ui.model] or None
        studio.model(spec)  # a model this server does not offer is refused first, whatever else came
        request = request_of(v)
        if melody is not None:  # the melody's own length, key and metre, whatever the boxes hold
            request = request.update(bars=None, key=None, meter=None)
        # written on a thread of its own: a reload reattaches to it (reattach), a closed tab leaves it to finish
        # the open piece's melody is its first voice: a score of several is harmonised from its top line
        live = studio.write(k, request, model=spec, continue_abc=cont_abc, rewrite_from=rewrite_from, title=title,
                            rewrite_to=rewrite_to, harmonise_abc=melody, harmonise_voice=1 if melody else None)
        yield from _follow(k, live)

    @with_session
    def run(k, v: dict):
        yield from write(k, v)

    def _follow(k, live) -> Iterator[dict]:
        cleared = False
        for item in live.follow(FOLLOW_S, UPDATE_GAP_S):
            # once the new piece is under way, nothing of the previous one stays beside it (its
            # player, seed, Write this again, downloads, pages, notes, cards): it is in History
            gone = {} if cleared else page.cleared(ui)
            cleared = True
            if isinstance(item, Progress) and (item.waiting is not None or item.keeping is not None):
                yield gone | {ui.progress: item.line()}  # (the score stays as it is)
            elif isinstance(item, Progress):
                yield gone | {ui.abc: item.abc, ui.live: item.abc, ui.progress: item.line()}
            elif item:
                # the seed box is emptied: a seed typed once is not used again without asking
                # (the seed of this piece is shown, with Write this again)
                yield page.show(ui, studio, k, item[0], siblings=item) | {ui.seed: ""}
            else:  # Stop came before the first bar: nothing to keep (what was open before is in History)
                yield {ui.progress: "stopped before a bar was written: nothing was kept"}

    @with_session
    def reattach(k):
        """A page loaded while its session's piece is being written (a reload, a second tab): its
        prompt and settings back in the page, then its progress and live score as it goes on."""
        live = studio.live(k)
        if live is None:
            yield gr.skip()
            return
        about = SimpleNamespace(prompt=live.about["prompt"], settings=live.about["settings"])
        yield page.restore(ui, studio, None, about, with_length=True) | {ui.filled: True}  # the lists: not the first prompt
        yield from _follow(k, live)

    reattached = list(dict.fromkeys(ui.shown + ui.settings_shown + [ui.filled]))
    ui.loaded.then(reattach, [ui.key], reattached, api_visibility="private", concurrency_limit=None)

    composing = dict(api_visibility="private", concurrency_id="model", concurrency_limit=config.compose_limit(),
                     show_progress_on=[ui.progress], js=TO_THE_MUSIC)
    ui.generate.click(by_name(ui, run), form, ui.shown, **composing)

    def score_of(v: dict, missing: str) -> tuple[str, str | None]:
        """The editor's ABC and the title it goes on under (the open piece's, unless edited away)."""
        text = v[ui.abc]
        if not text or not text.strip():
            raise SettingsError(missing)
        return text, page.edited(text, v[ui.current])[0]

    @with_session
    def run_continue(k, v: dict):
        text, title = score_of(v, "there is no score to continue: write or upload some ABC first")
        yield from write(k, v, cont_abc=text, title=title)

    @with_session
    def run_rewrite(k, v: dict):
        text, title = score_of(v, "there is no score to rewrite: open, write or upload one first")
        yield from write(k, v, cont_abc=text, rewrite_from=v[ui.rewrite_bar], title=title, rewrite_to=v[ui.rewrite_to])

    @with_session
    def run_harmonise(k, v: dict):
        text, title = score_of(v, "there is no melody to harmonise: write, open or upload one voice first")
        yield from write(k, v, melody=text, title=title)

    ui.cont.click(by_name(ui, run_continue), form | {ui.abc, ui.current}, ui.shown, **composing)
    ui.harmonise.click(by_name(ui, run_harmonise), form | {ui.abc, ui.current}, ui.shown, **composing)
    ui.rewrite.click(by_name(ui, run_rewrite), form | {ui.abc, ui.rewrite_bar, ui.rewrite_to, ui.current}, ui.shown,
                     **composing)
    ui.stop.click(with_session(lambda k: "stopping after this patch ..." if studio.stop(k, "compose") else gr.skip()),
                  [ui.key], [ui.progress], api_visibility="private", concurrency_limit=None)

    def again(current):
        """The open piece's prompt, settings, length and seed back in the page, to write it again."""
        if not isinstance(current, dict) or current.get("seed") is None:
            return gr.skip()
        record = SimpleNamespace(prompt=current.get("prompt") or {}, settings=current.get("settings") or {})
        return page.restore(ui, studio, None, record, with_length=True) | {
            ui.seed: str(current["seed"]), ui.variations: 1}

    restored = ui.settings_shown + [ui.seed, ui.variations]
    ui.again.click(again, [ui.current], restored, api_visibility="private", concurrency_limit=None).then(
        by_name(ui, run), form, ui.shown, **composing)

    def open_card(k, ids, n):
        if not valid_key(k) or not isinstance(ids, list) or n >= len(ids):
            return gr.skip()
        try:
            return page.show(ui, studio, k, studio.outcome(k, ids[n]))
        except CadenzaError as e:
            return keep_page(e)

    for n, card in enumerate(ui.cards):
        card.open.click(functools.partial(open_card, n=n), [ui.key, ui.card_ids], ui.shown, api_visibility="private",
                        concurrency_limit=None)


def wire_scores(ui: Page, config: ServerSettings, studio: Studio) -> None:
    """Render, upload and turning the score's pages."""
    @with_session
    def on_render(k, text, current=None):
        """The edits are the open piece's: its title and prompt go with them."""
        return page.show(ui, studio, k, studio.render(k, text, *page.edited(text, current)))

    @with_session
    def on_upload(k, path):
        if not path:
            return gr.skip()
        try:
            shown = page.show(ui, studio, k, studio.upload(k, path))
        except CadenzaError as e:
            keep_page(e)  # the notice; the open piece stays as it is
            return {ui.upload: None}  # the file that could not be read leaves the box
        # the box is emptied once the score is read: the piece is in the work area and History
        return shown | {ui.upload: None}

    @with_session
    def on_transpose(k, text, to_key, current=None, chosen_key=None):
        if not text or not text.strip():
            raise SettingsError("there is no score to transpose: open, write or upload one first")
        if not to_key or not to_key.strip():
            raise SettingsError("type the key to transpose to first (D, Bb, F#m ...)")
        shown = page.show(ui, studio, k, studio.transpose(k, text, to_key, *page.edited(text, current)))
        # a key chosen for the piece follows it: Continue would refuse the old key against the new score
        return shown | ({ui.music_key: to_key.strip()} if chosen_key and chosen_key.strip() else {})

    rendering = dict(api_visibility="private", concurrency_id="render", concurrency_limit=2,
                     show_progress_on=[ui.progress])
    ui.render.click(on_render, [ui.key, ui.abc, ui.current], ui.shown, **rendering)
    ui.transpose.click(on_transpose, [ui.key, ui.abc, ui.transpose_key, ui.current, ui.music_key],
                       ui.shown + [ui.music_key], **rendering)
    ui.upload.upload(on_upload, [ui.key, ui.upload], ui.shown + [ui.upload], **rendering)

    def turn(paths, n, step):
        if not paths:
            return gr.skip(), n
        n = max(0, min(len(paths) - 1, n + step))
        return page.page_html(Path(paths[n]).read_text(), n, len(paths)), n

    for button, step in ((ui.prev_page, -1), (ui.next_page, 1)):
        button.click(functools.partial(turn, step=step), [ui.pages, ui.page_no], [ui.printed, ui.page_no],
                     api_visibility="private", concurrency_limit=None)
