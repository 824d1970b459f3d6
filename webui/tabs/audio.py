"""The Audio tab (text and a melody to MusicGen) and Perform with MusicGen on the Score tab."""
from __future__ import annotations

import html

import gradio as gr

from engine.api import AudioProgress
from engine.audio.musicgen import AudioSettings
from engine.errors import CadenzaError
from engine.service.pieces import Outcome
from engine.service.studio import Studio
from engine.settings import ServerSettings
from webui import page
from webui.forms import audio_request
from webui.handlers import by_name, servable, with_session
from webui.page import Page

AUDIO_PLAYERS = 4  # variations shown with a player each (all are in the downloads)


def build(ui: Page, config: ServerSettings, studio: Studio) -> None:
    """The Audio tab: text (and a melody) to MusicGen, players, pictures and downloads."""
    with gr.Tab("Audio", id="audio"):
        gr.Markdown("Text to music with Meta's MusicGen (weights CC-BY-NC 4.0: non-commercial use). "
                    "Melody models can follow a melody you upload or record.")
        ui.a_weights = gr.Markdown(page.weights_note(studio, config.audio_model, melody=False))
        with gr.Row():
            ui.a_prompt = gr.Textbox(label="Describe the music", lines=2, scale=3,
                                  placeholder="warm string quartet, slow, melancholic")
            ui.a_model = gr.Dropdown(label="MusicGen model", value=config.audio_model, allow_custom_value=True,
                                  choices=page.musicgen_choices(studio, config.audio_model, melody=False))
        ui.a_duration = gr.Slider(1, config.max_audio_seconds, value=AudioSettings.duration, step=1,
                               label="Duration (seconds; past 30 s it is made in overlapping windows)")
        with gr.Accordion("Advanced settings", open=False):
            with gr.Row():
                ui.a_guidance = gr.Slider(0, 10, value=AudioSettings.guidance_scale, step=0.1, label="Guidance scale")
                ui.a_top_k = gr.Slider(0, 1000, value=AudioSettings.top_k, step=1, label="Top-k")
                ui.a_top_p = gr.Slider(0, 1, value=AudioSettings.top_p, step=0.01, label="Top-p (0 = off)")
                ui.a_temperature = gr.Slider(0.1, 2.0, value=AudioSettings.temperature, step=0.05, label="Temperature")
            with gr.Row():
                ui.a_seed = gr.Textbox(value="", label="Seed", placeholder="random")
                ui.a_variations = gr.Slider(1, AUDIO_PLAYERS, value=1, step=1, label="Variations made together")
        ui.a_melody = gr.Audio(label="Melody to follow (melody models only): upload or record", type="filepath",
                            sources=["upload", "microphone"])
        with gr.Row():
            ui.a_go = gr.Button("Generate audio", variant="primary")
            ui.a_stop = gr.Button("Stop", variant="secondary")
        ui.a_progress = gr.Markdown("")
        ui.a_players = [gr.Audio(label=f"Variation {i + 1}", type="filepath", interactive=False, visible=i == 0)
                     for i in range(AUDIO_PLAYERS)]
        ui.a_pictures = gr.Gallery(label="Waveform and spectrogram", columns=2, height=360, object_fit="contain")
        ui.a_files = gr.File(label="Downloads", file_count="multiple", interactive=False)


def audio_summary(o: Outcome) -> str:
    r = o.record
    st = r.settings
    made = st.get("audio_seconds", 0)
    rtf = f", real-time factor {r.seconds / made:.2f}" if made else ""
    lines = [f"**{html.escape(r.title)}** - {made:.1f} s of audio in {r.seconds:.1f} s{rtf}",
             f"seed **{r.seed}**, model {html.escape(r.model)}, {st.get('windows', 1)} window(s), stop: {r.stop_reason}"]
    if r.prompt.get("melody"):
        lines.append(f"following the melody of {html.escape(r.prompt['melody'])}")
    lines += [f"- note: {html.escape(w)}" for w in r.warnings[:8]]
    return "\n\n".join(lines)


def audio_players(o: Outcome) -> list:
    wavs = o.paths("wav")
    return [gr.update(value=servable(wavs[i]), visible=True) if i < len(wavs)
            else gr.update(value=None, visible=False) for i in range(AUDIO_PLAYERS)]


def show_audio(ui: Page, studio: Studio, key: str, o: Outcome) -> dict:
    """Everything the Audio page shows of a finished clip, by component."""
    return {ui.a_progress: audio_summary(o), **dict(zip(ui.a_players, audio_players(o))),
            ui.a_pictures: [servable(p) for p in o.paths("png")], ui.a_files: [servable(p) for p in o.downloads()],
            **page.history_shown(ui, studio.history(key))}


def wire(ui: Page, config: ServerSettings, studio: Studio) -> None:
    """The Audio page and "Perform with MusicGen"."""
    @with_session(errors=(CadenzaError, ValueError, TypeError))  # (a melody file soundfile cannot read)
    def run_audio(k, v: dict):
        request = audio_request(v[ui.a_prompt], v[ui.a_duration], v[ui.a_seed], guidance=v[ui.a_guidance],
                                tk=v[ui.a_top_k], tp=v[ui.a_top_p], temp=v[ui.a_temperature], var=v[ui.a_variations],
                                melody=v[ui.a_melody])
        for item in studio.audio(k, request, model=v[ui.a_model] or None):
            if isinstance(item, AudioProgress):
                yield {ui.a_progress: f"making audio (seed {item.seed}): step {item.steps} of {item.total}, "
                                      f"{item.elapsed:.1f}s"}
            else:
                yield show_audio(ui, studio, k, item[0])

    form = {ui.key, ui.a_prompt, ui.a_model, ui.a_duration, ui.a_guidance, ui.a_top_k, ui.a_top_p, ui.a_temperature,
            ui.a_seed, ui.a_variations, ui.a_melody}
    ui.a_go.click(by_name(ui, run_audio), form, ui.audio_shown, api_visibility="private", concurrency_id="audio",
                  concurrency_limit=1)
    ui.a_stop.click(with_session(lambda k: "stopping ..." if studio.stop(k, "audio") else gr.skip()), [ui.key],
                    [ui.a_progress], api_visibility="private", concurrency_limit=None)

    @with_session(errors=(CadenzaError, ValueError, TypeError))
    def run_perform(k, v: dict):
        request = audio_request(v[ui.style], v[ui.perform_seconds], v[ui.seed], score=v[ui.abc] or "")
        for item in studio.audio(k, request, model=v[ui.perform_model] or None):
            if isinstance(item, AudioProgress):
                yield {ui.perform_progress: f"performing (seed {item.seed}): step {item.steps} of {item.total}, "
                                            f"{item.elapsed:.1f}s"}
            else:
                o = item[0]
                wavs = o.paths("wav")
                yield {ui.perform_progress: audio_summary(o), ui.perform_audio: servable(wavs[0]) if wavs else None,
                       ui.perform_files: [servable(p) for p in o.downloads()], **page.history_shown(ui, studio.history(k))}

    ui.perform.click(by_name(ui, run_perform), {ui.key, ui.abc, ui.style, ui.perform_model, ui.perform_seconds, ui.seed},
                     ui.perform_shown, api_visibility="private", concurrency_id="audio", concurrency_limit=1)
