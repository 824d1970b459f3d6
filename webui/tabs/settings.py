"""The settings sidebar: sampling, retries, the critic, the longest text, and the model (use one from
the models folder, or download one where the server allows it)."""
from __future__ import annotations

import gradio as gr

from engine.errors import CadenzaError
from engine.requests import ComposeRequest
from engine.service.policy import public
from engine.service.studio import Studio
from engine.settings import ServerSettings
from engine.symbolic.sampling import SamplingSettings
from webui.handlers import fail
from webui.page import Page

# The page's and the API's defaults are the engine's: read from its request classes' fields
# (ComposeRequest.max_patches ...), never written here.


def build(ui: Page, config: ServerSettings, studio: Studio) -> None:
    """What a composer sets once, out of the way of the music: the model and the sampling."""
    with gr.Sidebar(label="Settings", open=False, position="right"):
        gr.Markdown("### Settings\nFor Generate, Continue and Rewrite.")
        ui.temperature = gr.Slider(0.1, 2.0, value=SamplingSettings.temperature, step=0.05, label="Temperature")
        ui.top_k = gr.Slider(0, 128, value=SamplingSettings.top_k, step=1, label="Top-k (0 = off)")
        ui.top_p = gr.Slider(0.05, 1.0, value=SamplingSettings.top_p, step=0.01, label="Top-p")
        ui.bar_retries = gr.Slider(0, 32, value=ComposeRequest.bar_retries, step=1,
                                   label="Bar retries (0 = NotaGen's sampling)")
        ui.critic = gr.Checkbox(value=ComposeRequest.critic,
                                label="Musical critic: write again bars that fit no chord or move in parallel "
                                      "fifths or octaves, and end on a cadence (where the style's real music does)")
        ui.max_patches = gr.Slider(16, config.max_patches, value=min(ComposeRequest.max_patches, config.max_patches),
                                   step=16, label="Longest text the model may write (x16 characters)")
        with gr.Accordion("Model", open=False):
            offered = ", ".join(studio.policy.offered()[:8]) or "none"
            ui.model = gr.Textbox(label="Model", value="", placeholder="empty: the server's model; or the name of "
                                  f"a model in its models folder ({offered})")
            if not config.allow_downloads:
                gr.Markdown("Downloading from the Hugging Face Hub is off on this server (the person running "
                            "it can start it with `--allow-downloads`).")
            with gr.Row(visible=bool(config.allow_downloads)):
                ui.repo = gr.Textbox(label="Hugging Face repo", placeholder="ElectricAlexis/NotaGen")
                ui.repo_file = gr.Textbox(label="File", placeholder="weights_notagenx_p_size_16_p_length_1024_p_layers_20_h_size_1280.pth")
                ui.fetch = gr.Button("Download", scale=0)
            ui.use_model = gr.Button("Use this model")


def wire(ui: Page, studio: Studio) -> None:
    """Model: use another model from the models folder, or download one (when allowed)."""
    def on_use_model(spec):
        try:
            studio.model(spec or None)
        except CadenzaError as e:
            fail(e)
        return f"loading {public(spec) if spec else 'the server model'} ...", False, gr.Timer(active=True)

    ui.use_model.click(on_use_model, [ui.model], [ui.status, ui.filled, ui.timer], api_visibility="private",
                       concurrency_limit=None)

    def on_fetch(r, f, progress_bar=gr.Progress(track_tqdm=True)):
        try:
            name = studio.fetch(r, f)
        except CadenzaError as e:
            fail(e)
        return name, f"downloaded {public(name)}: press 'Use this model'"

    ui.fetch.click(on_fetch, [ui.repo, ui.repo_file], [ui.model, ui.status], api_visibility="private",
                   concurrency_id="download",
                concurrency_limit=1)
