"""What every page load does: the session key, the work area kept over a reload, the model loading
(its status each second, then the prompt lists) and the cascading prompt lists."""
from __future__ import annotations

import secrets

import gradio as gr

from engine.errors import CadenzaError
from engine.service.policy import public
from engine.service.studio import Studio
from engine.settings import ServerSettings
from engine.store import valid_key
from webui import page
from webui.handlers import fail
from webui.page import Page


def wire(ui: Page, config: ServerSettings, studio: Studio, demo: gr.Blocks) -> None:
    """The session key, the work area kept over a reload, the model loading at start and the
    cascading prompt lists."""
    def init(k, work):
        if not valid_key(k):
            k = secrets.token_urlsafe(24)
        shown = {ui.key: k, **page.history_shown(ui, studio.history(k)), ui.status: public(studio.model(None).status())}
        return shown | _reopen(k, work)

    def _reopen(k, work) -> dict:
        """The piece open before the reload, and the ABC being edited in it (unsaved)."""
        work = work if isinstance(work, dict) else {}
        draft = work.get("draft") if isinstance(work.get("draft"), str) else None
        try:
            shown = page.show(ui, studio, k, studio.outcome(k, work.get("piece"))) if work.get("piece") else {}
        except CadenzaError:
            shown = {}
        if draft is not None and len(draft) <= config.max_score_chars:
            shown |= {ui.abc: draft, ui.live: draft, ui.work: {"piece": work.get("piece"), "draft": draft}}
        return shown

    def tick(done, spec, current):
        """While a model loads: its status each second, then the lists (the open piece's prompt
        when it has one); the timer then stops (ticks go through the queue like every request)."""
        idle = gr.Timer(active=False)
        if done:
            return (gr.skip(),) * 4 + (done, idle)
        try:
            slot = studio.model(spec or None)
            if not slot.ready:
                return public(slot.status()), gr.skip(), gr.skip(), gr.skip(), False, gr.skip()
            first = studio.prompts(spec or None).prompts[0]
        except CadenzaError as e:
            return public(str(e)), gr.skip(), gr.skip(), gr.skip(), True, idle
        opened = (current or {}).get("prompt") if isinstance(current, dict) else None
        shown = page.prompt_lists(studio, spec, opened or {}) or page.prompt_lists(studio, spec, first) or (gr.skip(),) * 3
        return (public(slot.status()), *shown, True, idle)

    restored = list(dict.fromkeys([ui.key, ui.status] + ui.shown))
    ui.loaded = demo.load(init, [ui.key, ui.work], restored, api_visibility="private", concurrency_limit=None)
    demo.load(lambda: (page.weights_note(studio, config.audio_model, False), page.weights_note(studio, config.melody_model, True)),
              None, [ui.a_weights, ui.perform_weights], api_visibility="private", concurrency_limit=None)
    ui.timer = gr.Timer(1.0)
    ui.timer.tick(tick, [ui.filled, ui.model, ui.current],
                  [ui.status, ui.period, ui.composer, ui.instrumentation, ui.filled, ui.timer],
                  api_visibility="private", concurrency_limit=None)

    def on_period(spec, p):
        try:
            _, comps, c, ins = studio.choices(spec or None, p)
        except CadenzaError:
            return gr.skip(), gr.skip()
        return gr.update(choices=comps, value=c), gr.update(choices=ins, value=ins[0])

    def on_composer(spec, p, c):
        try:
            _, _, _, ins = studio.choices(spec or None, p, c)
        except CadenzaError:
            return gr.skip()
        return gr.update(choices=ins, value=ins[0])

    ui.period.input(on_period, [ui.model, ui.period], [ui.composer, ui.instrumentation], api_visibility="private",
                    concurrency_limit=None)
    ui.composer.input(on_composer, [ui.model, ui.period, ui.composer], [ui.instrumentation], api_visibility="private",
                      concurrency_limit=None)

    def on_surprise(spec, p="", c="", i=""):
        """Another prompt than the one shown (a few draws, bounded: a table of one repeats)."""
        try:
            for _ in range(8):
                pick = studio.surprise(spec or None)
                if (pick.period, pick.composer, pick.instrumentation) != (p, c, i):
                    break
            return page.prompt_lists(studio, spec, pick) or (gr.skip(),) * 3
        except CadenzaError as e:
            fail(e)

    ui.surprise.click(on_surprise, [ui.model, ui.period, ui.composer, ui.instrumentation],
                      [ui.period, ui.composer, ui.instrumentation], api_visibility="private", concurrency_limit=None)

    def keep_draft(work, text):
        """Every edit of the ABC goes to this browser's storage, so a reload finds it."""
        work = work if isinstance(work, dict) else {}
        return {"piece": work.get("piece"), "draft": text if isinstance(text, str) else None}

    ui.abc.input(keep_draft, [ui.work, ui.abc], [ui.work], api_visibility="private", concurrency_limit=None,
                 trigger_mode="always_last", show_progress="hidden")
