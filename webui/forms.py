"""The browser's and the scripts' values as they come (text boxes, sliders, a script's numbers)
-> the engine's request objects, which check them once (engine.requests)."""
from __future__ import annotations

from engine.audio.musicgen import AudioSettings
from engine.checks import page_number, page_seed
from engine.errors import SettingsError
from engine.requests import AudioRequest, ComposeRequest
from engine.symbolic.controls import MAX_BARS, Controls
from engine.symbolic.sampling import SamplingSettings

def audio_request(text, dur, sd, guidance=AudioSettings.guidance_scale, tk=AudioSettings.top_k, tp=AudioSettings.top_p,
                   temp=AudioSettings.temperature, var=AudioSettings.variations, melody=None, score=None) -> AudioRequest:
    """The page's and the API's values as they come -> an AudioRequest, which checks them (the
    page's seed -1 means a random one: None from here on)."""
    settings = AudioSettings(duration=dur, guidance_scale=guidance, top_k=tk, top_p=tp, temperature=temp,
                             seed=page_seed(page_number(sd)), variations=var)
    return AudioRequest(text, settings, melody=melody or None, score=score)


def compose_request(period, composer, instrumentation, temperature, top_k, top_p, seed, max_patches, variations,
                    bar_retries=ComposeRequest.bar_retries, critic=ComposeRequest.critic, bars=None, music_key=None,
                    meter=None, tempo=None) -> ComposeRequest:
    """The page's and the API's values as they come -> a ComposeRequest, which checks them (an
    empty control box, or 0, leaves it to the model)."""
    for typed, said in ((bars, f"a length of 0 bars: leave Length empty for the model's own length, or ask for "
                                f"1 to {MAX_BARS:,} bars"),
                        (tempo, "a tempo of 0: leave Tempo empty for the model's own tempo, or give 20 to 400 "
                                "quarter notes a minute")):
        if isinstance(typed, str) and page_number(typed) == 0:  # typed in the page (the API's 0 is its default)
            raise SettingsError(said)
    return ComposeRequest(period, composer, instrumentation,
                          SamplingSettings(top_k=top_k, top_p=top_p, temperature=temperature),
                          seed=page_seed(page_number(seed)), variations=variations, max_patches=max_patches,
                          bar_retries=bar_retries, critic=critic,
                          controls=Controls.from_page(page_number(bars), music_key, meter, page_number(tempo)))
