"""The History tab: this session's pieces; a clicked row is selected: play, open, rename, delete, undo."""
from __future__ import annotations

import html

import gradio as gr

from engine.service.studio import Studio
from engine.settings import ServerSettings
from webui import page, views
from webui.tabs import audio
from webui.handlers import servable, with_session
from webui.page import Page

AUDIO_KINDS = ("audio", "performed")  # records that open on the Audio tab (the rest on the Score tab)


def build(ui: Page) -> None:
    """The History tab: this session's pieces; a clicked row is selected: play, open, rename, delete."""
    with gr.Tab("History", id="history") as ui.history_tab:
        gr.Markdown("Every piece of this browser's session, newest first. Click a row to select it.")
        ui.history = gr.Dataframe(headers=views.HISTORY_HEADERS, interactive=False, wrap=True,
                                  column_widths=views.HISTORY_WIDTHS, max_height=420, elem_id="history-table")
        with gr.Group(visible=False) as ui.picked_box:
            ui.picked_text = gr.Markdown("")
            ui.picked_audio = gr.Audio(type="filepath", interactive=False, show_label=False)
            with gr.Row(equal_height=True):
                ui.open_picked = gr.Button("Open", variant="primary", scale=0, min_width=100)
                ui.new_title = gr.Textbox(label="New title", placeholder="a title for this piece", scale=2)
                ui.rename = gr.Button("Rename", scale=0, min_width=100)
                ui.delete_picked = gr.Button("Delete", variant="stop", scale=0, min_width=100)
        with gr.Row():
            ui.usage = gr.Markdown("")
            ui.undelete = gr.Button("Undo delete", visible=False, scale=0, min_width=140)
        with gr.Accordion("Delete several", open=False):
            with gr.Row():
                ui.to_delete = gr.Dropdown(label="Pieces to delete", choices=[], multiselect=True, scale=3)
                ui.delete = gr.Button("Delete", variant="stop", scale=0)


def wire(ui: Page, config: ServerSettings, studio: Studio) -> None:
    """History: a clicked row is selected (its player, Open, Rename, Delete); a score opens on the
    Score page with its prompt and settings, audio on the Audio page."""
    def listing(k) -> dict:
        records = studio.history(k)
        choices = [(f"{r.created.replace('T', ' ')[:16]} {r.title}", r.id) for r in records]
        return {**page.history_shown(ui, records), ui.to_delete: gr.update(choices=choices, value=[]), ui.usage: studio.usage(k),
                ui.picked: "", ui.picked_box: gr.update(visible=False)}

    @with_session
    def on_history(k, ids, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not isinstance(ids, list) or not isinstance(row, int) or not 0 <= row < len(ids):
            return gr.skip()
        o = studio.outcome(k, ids[row])
        r = o.record
        wav = o.paths("wav")
        about = f"{views.summary(r)}" + (f" · seed {r.seed}" if r.seed is not None else "") + f" · {r.created[:16]}"
        return {ui.picked: r.id, ui.picked_box: gr.update(visible=True), ui.picked_text: about,
                ui.picked_audio: servable(wav[0]) if wav else None, ui.new_title: r.title}

    picked = [ui.picked, ui.picked_box, ui.picked_text, ui.picked_audio, ui.new_title]
    ui.history.select(on_history, [ui.key, ui.history_ids], picked, api_visibility="private", concurrency_limit=None)

    @with_session
    def on_open(k, pid, spec):
        o = studio.outcome(k, pid)
        if o.record.kind in AUDIO_KINDS:
            return {**audio.show_audio(ui, studio, k, o), ui.tabs: gr.Tabs(selected="audio")}
        return {**page.show(ui, studio, k, o, siblings=[o]), **page.restore(ui, studio, spec, o.record),
                ui.tabs: gr.Tabs(selected="score")}

    opened = list(dict.fromkeys(ui.shown + ui.audio_shown + [ui.tabs, ui.period, ui.composer, ui.instrumentation,
                                                             ui.temperature, ui.top_k, ui.top_p, ui.bar_retries,
                                                             ui.critic, ui.max_patches, ui.music_key, ui.meter,
                                                             ui.tempo, ui.bars]))
    ui.open_picked.click(on_open, [ui.key, ui.picked, ui.model], opened, api_visibility="private",
                         concurrency_limit=None)

    @with_session
    def on_rename(k, pid, title):
        r = studio.rename(k, pid, title)
        gr.Info(f"renamed: {html.escape(r.title)}")  # a title is the user's text, never HTML
        return listing(k)

    @with_session
    def on_delete(k, ids):
        n, freed = studio.delete(k, ids or [])
        gr.Info(f"deleted {n} piece(s), {freed / 2**20:.1f} MB freed: Undo delete brings them back")
        return listing(k) | {ui.undelete: gr.update(visible=True)}

    @with_session
    def on_undelete(k):
        n = studio.undelete(k)
        gr.Info(f"{n} piece(s) back in History" if n else "nothing to bring back: only the last Delete can be undone")
        return listing(k) | {ui.undelete: gr.update(visible=False)}

    listed = [ui.history, ui.history_ids, ui.to_delete, ui.usage, ui.picked, ui.picked_box, ui.undelete]
    ui.history_tab.select(with_session(listing), [ui.key], listed, api_visibility="private", concurrency_limit=None)
    ui.rename.click(on_rename, [ui.key, ui.picked, ui.new_title], listed, api_visibility="private",
                    concurrency_limit=None)
    ui.delete_picked.click(with_session(lambda k, pid: on_delete(k, [pid] if pid else [])), [ui.key, ui.picked], listed,
                           api_visibility="private", concurrency_limit=None)
    ui.delete.click(on_delete, [ui.key, ui.to_delete], listed, api_visibility="private", concurrency_limit=None)
    ui.undelete.click(on_undelete, [ui.key], listed, api_visibility="private", concurrency_limit=None)
