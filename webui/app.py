"""The Cadenza studio page (Gradio), put together: the tabs (webui/tabs/, one module each), the
session's wiring (webui/session.py) and the scripts' endpoints (webui/http_api.py). Thin: every
button calls a Studio method (engine/service/studio.py), which calls the engine. Per-user data comes in through the session key the browser keeps
(gr.BrowserState) and lives on disk under the outputs directory, never in module globals."""
from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

import gradio as gr

from engine.service.studio import Studio
from engine.settings import ServerSettings
from webui import session
from webui.guard import LoginBackoff
from webui.handlers import sweep_served, trim_served
from webui.http_api import endpoints
from webui.page import Page
from webui.tabs import audio, history, score, settings, system

log = logging.getLogger("cadenza.web")

STATIC = Path(__file__).parent / "static"  # abcjs (vendored, pinned) and the script that engraves with it
CSS = """
#live-abc, #score-marks { display: none !important; }
#live-score { background: white; color: black; overflow: auto; max-height: 78vh; min-height: 160px; padding: 4px 8px; }
#live-score .placeholder { color: #666; padding: 2em; }
#score-page { background: white; overflow-x: auto; max-height: 80vh; }
#score-page svg { width: 100%; height: auto; }
#status { min-height: 1.6em; }
.abc-incipit { background: white; min-height: 60px; overflow: hidden; }
.toast-wrap { top: auto !important; bottom: var(--size-4); }  /* notices at the foot: never over the lists and buttons */
#history-table table { table-layout: fixed; }
#history-table td, #history-table th { word-break: normal; overflow-wrap: anywhere; }
"""
# Page-wide rules Gradio's css= cannot hold (it scopes every selector inside the app's container):
# below 1100 px the Settings sidebar opens over the page, as Gradio does below 768 px, instead of
# squeezing the score into what is left (at 820 px the music kept 420 px).
HEAD_CSS = """
@media (max-width: 1100px) {
  .sidebar-parent, .sidebar-parent:has(.sidebar.open) { padding-left: 0 !important; padding-right: 0 !important; }
}
"""




def _head() -> str:
    """abcjs and the engraving script, inlined: no file route to open, works offline."""
    scripts = [STATIC / "abcjs-basic-min.js", STATIC / "cadenza-score.js", STATIC / "page.js"]
    return f"<style>{HEAD_CSS}</style>" + "".join(
        f"<script>{p.read_text(encoding='utf-8')}</script>" for p in scripts if p.is_file())


def build_app(config: ServerSettings, studio: Studio | None = None) -> gr.Blocks:
    """The page: each tab's build() (webui/tabs/), then the wiring of each; `ui` (webui.page.Page)
    holds the components by name."""
    studio = studio or Studio(config)
    cache_s = int(config.cache_hours * 3600)
    with gr.Blocks(title="Cadenza", delete_cache=(min(3600, cache_s), cache_s)) as demo:
        secret = studio.store.secret()
        ui = Page()
        ui.key = gr.BrowserState("", storage_key="cadenza-session", secret=secret)
        # the work area (open piece, unsaved ABC) kept in this browser over a reload
        ui.work = gr.BrowserState({}, storage_key="cadenza-work", secret=secret)
        ui.pages, ui.piece_id, ui.filled, ui.current = gr.State([]), gr.State(""), gr.State(False), gr.State({})
        ui.card_ids, ui.history_ids, ui.picked = gr.State([]), gr.State([]), gr.State("")
        with gr.Row(equal_height=True):
            gr.Markdown("## Cadenza\nPick a style, generate, read, listen, download. Settings: the sidebar on the right.")
            ui.status = gr.Markdown("loading the model ...")
        with gr.Tabs() as ui.tabs:
            score.build(ui, config, studio)
            audio.build(ui, config, studio)
            history.build(ui)
            system.build(ui)
        settings.build(ui, config, studio)
        ui.page_no = gr.State(0)
        # what a finished piece, clip or performance may change on the page (handlers return dicts by component)
        ui.shown = [ui.abc, ui.live, ui.marks, ui.progress, ui.notes, ui.seed_info, ui.again, ui.printed, ui.pages, ui.page_no,
                    ui.audio, ui.downloads, ui.history, ui.history_ids, ui.piece_id, ui.current, ui.work,
                    ui.cards_row, ui.card_ids, ui.seed, *(x for c in ui.cards for x in (c.box, c.text, c.audio))]
        ui.audio_shown = [ui.a_progress, *ui.a_players, ui.a_pictures, ui.a_files, ui.history, ui.history_ids]
        # what _restore sets: a piece's prompt and settings
        ui.settings_shown = [ui.period, ui.composer, ui.instrumentation, ui.temperature, ui.top_k, ui.top_p,
                             ui.bar_retries, ui.critic, ui.max_patches, ui.music_key, ui.meter, ui.tempo, ui.bars]
        ui.perform_shown = [ui.perform_progress, ui.perform_audio, ui.perform_files, ui.history, ui.history_ids]
        session.wire(ui, config, studio, demo)
        settings.wire(ui, studio)
        score.wire_compose(ui, config, studio)
        score.wire_scores(ui, config, studio)
        audio.wire(ui, config, studio)
        history.wire(ui, config, studio)
        system.wire(ui, demo, studio)
        ui.check()
        demo.ui = ui  # the components by name, for tests that call the handlers as a browser does
        endpoints(studio, config)
    # api_open=False: /gradio_api/run/<name> is refused, so every request waits in the queue and
    # keeps its limits (gradio_client and the page use the queue).
    demo.queue(max_size=config.queue_size, default_concurrency_limit=config.concurrency, api_open=False)
    return demo


def start(config: ServerSettings, studio: Studio | None = None, quiet: bool = False):
    """Builds the page and serves it in the background (what launch() and the tests run):
    -> (demo, studio, url). With --auth, wrong passwords are slowed per client address."""
    studio = studio or Studio(config)
    studio.model(None)  # starts loading now; the page is up meanwhile
    demo = build_app(config, studio)
    # uvicorn believes X-Forwarded-For from the addresses in FORWARDED_ALLOW_IPS (by default this
    # machine): anyone with a local tunnel could then pose as any address to the login limit.
    os.environ["FORWARDED_ALLOW_IPS"] = config.trusted_proxies
    middleware = []
    if config.auth:
        from starlette.middleware import Middleware

        middleware.append(Middleware(LoginBackoff, free_tries=config.login_free_tries))
    demo.launch(server_name=config.host, server_port=config.port, auth=config.auth, share=config.share,
                max_file_size=f"{config.max_upload_mb}mb", css=CSS, head=_head(), show_error=False, prevent_thread_lock=True,
                quiet=quiet, app_kwargs={"middleware": middleware})
    return demo, studio, f"http://{config.host}:{config.port}/"


def launch(config: ServerSettings) -> None:
    """Serves until SIGTERM or Ctrl+C, then: no new work, running pieces stopped and kept (their
    record says "shutdown"), conversions ended, exit within about 30 s."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    demo, studio, url = start(config)
    print(f"Cadenza studio on {url}  (outputs in {studio.store.root})", flush=True)
    cache_s = config.cache_hours * 3600
    while not stop.wait(60.0):  # the main thread only waits for a signal; each minute: old served copies go
        sweep_served(cache_s)
        trim_served(int(config.cache_max_gb * 2**30))
    _shut_down(demo, studio)


def _shut_down(demo, studio: Studio) -> None:
    watchdog = threading.Timer(30.0, lambda: os._exit(1))  # whatever hangs, the process ends
    watchdog.daemon = True
    watchdog.start()
    print("Cadenza: shutting down: finishing what is running ...", flush=True)
    summary = studio.shutdown()
    # a job is one request (a score with its variations, a render, a clip), not one piece
    print(f"Cadenza: {summary['stopped']} running request(s) stopped, what they wrote kept; "
          f"{summary['workers_killed']} conversion(s) "
          f"ended{', ' + str(summary['unfinished']) + ' not finished in time' if summary['unfinished'] else ''}",
          flush=True)
    try:
        demo.close()
    finally:
        os._exit(0)  # Gradio's and the queue's threads need not be waited for: every record is on disk
