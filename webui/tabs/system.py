"""The System tab: devices, models (and their replicas), the queue, as tables."""
from __future__ import annotations

import gradio as gr

from engine.service.studio import Studio
from webui import views
from webui.page import Page


def build(ui: Page) -> None:
    """The System tab: devices, models, the queue, as tables."""
    with gr.Tab("System", id="system"):
        ui.sys_line = gr.Markdown("")
        ui.sys_devices = gr.Dataframe(headers=["device", "name", "free GiB", "total GiB"], label="Devices",
                                      interactive=False, wrap=True)
        ui.sys_models = gr.Dataframe(headers=["model", "kind", "status", "placement", "batch"], label="Models",
                                     interactive=False, wrap=True, column_widths=["12%", "10%", "20%", "28%", "30%"])
        ui.refresh = gr.Button("Refresh")


def wire(ui: Page, demo: gr.Blocks, studio: Studio) -> None:
    """The System page, as tables."""
    def system_info():
        # Gradio has no public call for the queue's length; read it if this version has it.
        queue = getattr(demo, "_queue", None)
        waiting = len(queue) if queue is not None and hasattr(queue, "__len__") else None
        devices, models, line = views.system_tables({**studio.system(), "waiting_in_queue": waiting})
        return line, devices, models

    shown = [ui.sys_line, ui.sys_devices, ui.sys_models]
    ui.refresh.click(system_info, None, shown, api_visibility="private", concurrency_limit=None)
    demo.load(system_info, None, shown, api_visibility="private", concurrency_limit=None)
