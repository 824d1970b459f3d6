"""Rendering a score to MusicXML, MIDI, WAV, sheet music (SVG, PDF, PNG) and a ZIP bundle.
Conversions run in child processes with time and memory limits (engine.render.worker)."""
