"""The named endpoints scripts call (gradio_client): /prompts, /compose, /continue, /rewrite,
/harmonise, /render, /transpose, /upload, /history, /piece, /audio, /perform, /delete, /undelete. Each
parameter is named for what it is; they go through the same queue and limits as the page."""
from __future__ import annotations

from dataclasses import asdict
from types import SimpleNamespace
from typing import Iterator

import gradio as gr

from engine.api import SCORE_KINDS, AudioProgress
from engine.audio.musicgen import AudioSettings
from engine.checks import page_number
from engine.errors import CadenzaError, SettingsError
from engine.render.identity import heading
from engine.requests import ComposeRequest
from engine.symbolic.sampling import SamplingSettings
from engine.settings import ServerSettings
from engine.service.pieces import Outcome, Progress
from engine.service.studio import Studio
from webui.handlers import fail, servable, with_session
from webui.forms import audio_request, compose_request

def endpoints(studio: Studio, config: ServerSettings) -> None:
    """Named endpoints for scripts (gradio_client): /prompts, /compose, /render, /upload, /history, /piece,
    /audio (MusicGen, optionally following a melody file), /perform (a score played by MusicGen),
    /delete. They go through the same queue and limits as the page. Those that only take and give
    JSON are typed functions (gr.api); those that take or give files are events on hidden
    components, because gr.api skips Gradio's file handling: an upload would not be checked to be
    one, and a result would hand out server paths instead of downloads."""
    json_endpoints(studio)
    with gr.Row(visible=False):  # each endpoint's parameters are its handler's, named in words (gradio_client)
        session = gr.Textbox(label="session_key")
        abc_in, text_in = gr.Textbox(label="abc"), gr.Textbox(label="text")
        model_in = gr.Textbox(label="model")
        p_in, c_in, i_in = gr.Textbox(label="period"), gr.Textbox(label="composer"), gr.Textbox(label="instrumentation")
        # no precision=0: Gradio would round text to an int before our checks and fail with a bare
        # error; each field's own check refuses text or a fraction by name instead
        seed_in = gr.Number(label="seed", value=-1)
        temp_in = gr.Number(label="temperature", value=SamplingSettings.temperature)
        tk_in = gr.Number(label="top_k", value=SamplingSettings.top_k)
        tp_in = gr.Number(label="top_p", value=SamplingSettings.top_p)
        mp_in = gr.Number(label="max_patches", value=ComposeRequest.max_patches)
        var_in = gr.Number(label="variations", value=1)
        bars_in, bar_in = gr.Number(label="bars", value=0), gr.Number(label="bar", value=1)
        last_in = gr.Number(label="last_bar", value=None)
        voice_in = gr.Number(label="voice", value=None)
        mkey_in, meter_in = gr.Textbox(label="music_key", value=""), gr.Textbox(label="meter", value="")
        tempo_in = gr.Number(label="tempo", value=0)
        info_out = gr.JSON(label="result")
        files_out = gr.File(label="files", file_count="multiple")
        file_in = gr.File(label="score", type="filepath")
        melody_in = gr.File(label="melody", type="filepath")
        style_in = gr.Textbox(label="style")
        dur_in = gr.Number(label="seconds", value=AudioSettings.duration)
        guid_in = gr.Number(label="guidance_scale", value=AudioSettings.guidance_scale)
        atk_in = gr.Number(label="audio_top_k", value=AudioSettings.top_k)
        atp_in = gr.Number(label="audio_top_p", value=AudioSettings.top_p)
        atemp_in = gr.Number(label="audio_temperature", value=AudioSettings.temperature)
        buttons = {name: gr.Button(visible=False) for name in ("compose", "continue", "rewrite", "harmonise", "render",
                                                                "transpose", "piece", "upload", "audio", "perform")}
    h = file_handlers(studio)
    out = [info_out, files_out]
    style = [model_in, p_in, c_in, i_in, seed_in, temp_in, tk_in, tp_in, mp_in, var_in, bars_in, mkey_in, meter_in,
             tempo_in]
    writing = dict(concurrency_id="model", concurrency_limit=config.compose_limit())
    rendering = dict(concurrency_id="render", concurrency_limit=2)
    sounding = dict(concurrency_id="audio", concurrency_limit=1)
    events = {  # endpoint: (handler, inputs after the session key, queue)
        "compose": (h.compose, style, writing),
        "continue": (h.continue_score, [abc_in] + style, writing),
        "rewrite": (h.rewrite, [abc_in, bar_in] + style + [last_in], writing),
        "harmonise": (h.harmonise, [abc_in] + style + [voice_in], writing),
        "render": (h.render, [abc_in], rendering),
        "transpose": (h.transpose, [abc_in, mkey_in], rendering),
        "upload": (h.upload, [file_in], rendering),
        "piece": (h.piece, [text_in], {}),
        "audio": (h.audio, [text_in, model_in, dur_in, seed_in, guid_in, atk_in, atp_in, atemp_in, var_in, melody_in],
                  sounding),
        "perform": (h.perform, [abc_in, style_in, model_in, dur_in, seed_in], sounding),
    }
    for name, (handler, inputs, queue) in events.items():
        buttons[name].click(handler, [session] + inputs, out, api_name=name, **queue)


def json_endpoints(studio: Studio) -> None:
    """/prompts, /history, /delete and /undelete: JSON in, JSON out, as typed functions."""
    def prompts(model: str = "") -> dict:
        """The period / composer / instrumentation combinations the model knows."""
        try:
            table = studio.prompts(model or None)
        except CadenzaError as e:
            fail(e)
        return {"prompts": [{"period": p.period, "composer": p.composer, "instrumentation": p.instrumentation}
                            for p in table.prompts]}

    @with_session(api=True)
    def history(session_key: str) -> dict:
        """Every piece of the session, newest first."""
        return {"pieces": [asdict(r) for r in studio.history(session_key)]}

    @with_session(api=True)
    def delete(session_key: str, piece_id: str) -> dict:
        """Removes one piece (its id, as /history gives it) from the session."""
        n, freed = studio.delete(session_key, [piece_id])
        return {"deleted": n, "freed_bytes": freed, "usage": studio.usage(session_key)}

    @with_session(api=True)
    def undelete(session_key: str) -> dict:
        """Brings back the pieces of the session's last /delete (until the next one or a restart)."""
        return {"restored": studio.undelete(session_key), "usage": studio.usage(session_key)}

    gr.api(prompts, api_name="prompts", concurrency_limit=None)
    gr.api(history, api_name="history")
    gr.api(delete, api_name="delete", concurrency_limit=None)
    gr.api(undelete, api_name="undelete", concurrency_limit=None)


def file_handlers(studio: Studio) -> SimpleNamespace:
    """The functions behind the endpoints that give files: (JSON, files) while streaming and at the end."""
    def files(outcomes: list[Outcome]) -> tuple[dict, list[str]]:
        return pieces_json(outcomes), [servable(p) for o in outcomes for p in o.downloads()]

    def written(session_key, model, request, **score) -> Iterator[tuple]:
        """A piece streamed as it is written: waiting, writing (with its ABC so far), rendering, done."""
        for item in studio.compose(session_key, request, model=model or None, **score):
            if isinstance(item, Progress) and item.waiting is not None:
                yield {"status": "waiting", "seed": item.seed, "position": item.waiting,
                       "reason": item.waiting_reason}, None
            elif isinstance(item, Progress) and item.keeping is not None:
                yield {"status": "rendering", "seed": item.seed, "rendered": item.keeping[0],
                       "pieces": item.keeping[1]}, None
            elif isinstance(item, Progress):
                yield {"status": "writing", "seed": item.seed, "bars": item.bars, "patches": item.patches,
                       "elapsed": round(item.elapsed, 2), "abc": item.abc}, None
            else:
                yield files(item)

    def request(period, composer, instrumentation, seed, temperature, top_k, top_p, max_patches, variations, bars,
                music_key, meter, tempo) -> ComposeRequest:
        return compose_request(period, composer, instrumentation, temperature, top_k, top_p, seed, max_patches,
                                variations, bars=bars, music_key=music_key, meter=meter, tempo=tempo)

    @with_session(api=True)
    def compose(session_key, model, period, composer, instrumentation, seed, temperature, top_k, top_p, max_patches,
                variations, bars=0, music_key="", meter="", tempo=0):
        yield from written(session_key, model, request(period, composer, instrumentation, seed, temperature, top_k,
                                                       top_p, max_patches, variations, bars, music_key, meter, tempo))

    @with_session(api=True)
    def continue_score(session_key, abc, model, period, composer, instrumentation, seed, temperature, top_k, top_p,
                       max_patches, variations, bars=0, music_key="", meter="", tempo=0):
        """The score goes on in the style given (bars: how many bars the whole piece should have)."""
        yield from written(session_key, model, request(period, composer, instrumentation, seed, temperature, top_k,
                                                       top_p, max_patches, variations, bars, music_key, meter, tempo),
                           continue_abc=score_text(abc, "continue"), title=title_of(abc))

    @with_session(api=True)
    def rewrite(session_key, abc, bar, model, period, composer, instrumentation, seed, temperature, top_k, top_p,
                max_patches, variations, bars=0, music_key="", meter="", tempo=0, last_bar=None):
        """The bars before `bar` kept (numbered as printed: a pickup is bar 0), the rest written anew; with
        `last_bar`, only bars bar..last_bar are, the bars after them kept too (the best of a few candidates)."""
        yield from written(session_key, model, request(period, composer, instrumentation, seed, temperature, top_k,
                                                       top_p, max_patches, variations, bars, music_key, meter, tempo),
                           continue_abc=score_text(abc, "rewrite"), rewrite_from=page_number(bar), title=title_of(abc),
                           rewrite_to=page_number(last_bar))

    @with_session(api=True)
    def harmonise(session_key, abc, model, period, composer, instrumentation, seed, temperature, top_k, top_p,
                  max_patches, variations, bars=0, music_key="", meter="", tempo=0, voice=None):
        """A melody (one voice, ABC; or `voice` 1, 2, ... of a score) harmonised in the style given: its
        bars the first voice of every bar, the other voices the model's; its key, metre and length kept."""
        yield from written(session_key, model, request(period, composer, instrumentation, seed, temperature, top_k,
                                                       top_p, max_patches, variations, bars, music_key, meter, tempo),
                           harmonise_abc=score_text(abc, "harmonise"), title=title_of(abc),
                           harmonise_voice=page_number(voice))

    @with_session(api=True)
    def render(session_key, abc):
        return files([studio.render(session_key, abc)])

    @with_session(api=True)
    def transpose(session_key, abc, music_key):
        """The score in another key, kept as a new piece ("... (in G)")."""
        return files([studio.transpose(session_key, score_text(abc, "transpose"), key_text(music_key))])

    @with_session(api=True)
    def upload(session_key, file):
        if not file:
            raise SettingsError(f"no file: expected {SCORE_KINDS}")
        return files([studio.upload(session_key, file)])

    @with_session(api=True)
    def piece(session_key, piece_id):
        return files([studio.outcome(session_key, piece_id)])

    def audio_stream(session_key, model, request):
        for item in studio.audio(session_key, request, model=model or None):
            if isinstance(item, AudioProgress):
                yield {"status": "working", "seed": item.seed, "steps": item.steps, "total": item.total,
                       "elapsed": round(item.elapsed, 2)}, None
            else:
                yield files(item)

    @with_session(api=True, errors=(CadenzaError, ValueError, TypeError))
    def audio(session_key, prompt, model, seconds, seed, guidance_scale, top_k, top_p, temperature, variations, melody):
        yield from audio_stream(session_key, model, audio_request(prompt, seconds, seed, guidance_scale, top_k, top_p,
                                                                   temperature, variations, melody=melody))

    @with_session(api=True, errors=(CadenzaError, ValueError, TypeError))
    def perform(session_key, abc, style, model, seconds, seed):
        yield from audio_stream(session_key, model, audio_request(style, seconds, seed, score=abc or ""))

    return SimpleNamespace(compose=compose, continue_score=continue_score, rewrite=rewrite, harmonise=harmonise,
                           render=render, transpose=transpose, upload=upload, piece=piece, audio=audio, perform=perform)


def score_text(abc, what: str) -> str:
    if not isinstance(abc, str) or not abc.strip():
        raise SettingsError(f"there is no score to {what}: expected ABC text (X:, a header, K: and some bars)")
    return abc


def key_text(music_key) -> str:
    if not isinstance(music_key, str) or not music_key.strip():
        raise SettingsError("no key to transpose to: expected a key such as G, Bb or F#m")
    return music_key.strip()


def title_of(abc) -> str | None:
    """A continued or rewritten score keeps its own title (its T: line), with "(continued)"."""
    return heading(abc)[0] if isinstance(abc, str) else None


def pieces_json(outcomes: list[Outcome]) -> dict:
    return {"status": "done", "pieces": [{**asdict(o.record), "abc": o.abc} for o in outcomes]}
