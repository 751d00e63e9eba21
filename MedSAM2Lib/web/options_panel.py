"""The page's side panel: the segments list and the MedSAM2 options, each control wired to a
:class:`~MedSAM2Lib.web.tool.WebTool` call (the tool keeps them where the desktop effect and module do). Only
widgets and state names here; what a value means is decided by the tool and the glue.
"""

from __future__ import annotations

from trame.widgets import html
from trame_vuetify.widgets import vuetify3 as v3

from ..model.precision import PRECISIONS
from ..slicer_glue.effect import DIRECTIONS, WINDOWINGS, WRITE_MODES
from .tool import WebTool

# State name -> (effect parameter, how the page's value becomes the parameter's)
PARAMETER_STATE = {"medsam2_direction": ("Direction", str), "medsam2_range_on": ("RangeEnabled", bool),
                   "medsam2_range_first": ("RangeFirst", str), "medsam2_range_last": ("RangeLast", str),
                   "medsam2_write_mode": ("WriteMode", str), "medsam2_new_segment_per_box": ("NewSegmentPerBox", bool),
                   "medsam2_background_clicks": ("BackgroundClicks", bool), "medsam2_windowing": ("Windowing", str),
                   "medsam2_fill_holes": ("FillHoles", bool), "medsam2_largest_component": ("LargestComponent", bool)}
SWATCH = ("`display: inline-block; width: 14px; height: 14px; border-radius: 3px; margin-right: 8px; "
          "vertical-align: middle; background: ${segment.colour}`")


def _items(choices) -> list:
    """The effect's (label, value) choices as a select's items."""
    return [{"title": label, "value": value} for label, value in choices]


def _setting(tool: WebTool, name: str, parameter: str, convert):
    """What a change of the state ``name`` does: the tool stores it as the effect's ``parameter``."""

    def changed(**values) -> None:
        tool.set_option(parameter, convert(values[name]))

    return changed


def build_options_panel(server, tool: WebTool) -> None:
    """The panel's widgets, inside the layout's drawer; its state starts from the tool's options."""
    state = server.state
    for name, (parameter, convert) in PARAMETER_STATE.items():
        value = tool.option(parameter)
        state[name] = value != "0" if convert is bool else value
        state.change(name)(_setting(tool, name, parameter, convert))
    settings = tool.model.settings
    state.medsam2_precision = settings.precision()
    state.medsam2_early_stop_on = settings.early_stop() is not None
    state.medsam2_early_stop_slices = settings.early_stop_slices()

    @state.change("medsam2_precision")
    def precision_chosen(medsam2_precision, **_):
        if medsam2_precision != settings.precision():
            tool.set_precision(medsam2_precision)

    @state.change("medsam2_early_stop_on", "medsam2_early_stop_slices")
    def early_stop_chosen(medsam2_early_stop_on, medsam2_early_stop_slices, **_):
        try:
            slices = int(medsam2_early_stop_slices)
        except (TypeError, ValueError):
            slices = medsam2_early_stop_slices  # the tool says why it is refused
        wanted = slices if medsam2_early_stop_on else None
        if wanted != settings.early_stop():
            tool.set_early_stop(wanted)

    with html.Div(style="padding: 8px 12px;"):
        html.Div("Segments", classes="text-subtitle-2")
        with v3.VList(density="compact", id="medsam2-segments"):
            with v3.VListItem(v_for="segment in medsam2_segments", key="segment.id",
                              active=("segment.id === medsam2_selected_segment",),
                              click=(tool.select_segment, "[segment.id]"), classes="medsam2-segment"):
                html.Span(style=(SWATCH,))
                html.Span("{{ segment.name }}")
        with html.Div(style="display: flex; gap: 8px;"):
            v3.VBtn("Add segment", id="medsam2-add-segment", size="small", click=tool.add_segment,
                    disabled=("medsam2_busy",))
            v3.VBtn("Remove", id="medsam2-remove-segment", size="small", click=tool.remove_segment,
                    disabled=("medsam2_busy || !medsam2_selected_segment",))
        v3.VCheckbox(label="New segment for each box", id="medsam2-new-segment-per-box",
                     v_model=("medsam2_new_segment_per_box",), density="compact", hide_details=True)
        v3.VCheckbox(label="Clicks add background points", v_model=("medsam2_background_clicks",),
                     density="compact", hide_details=True)
        with html.Div(style="display: flex; gap: 8px;"):  # the desktop effect's labels
            v3.VCheckbox(label="Fill small holes", id="medsam2-fill-holes", v_model=("medsam2_fill_holes",),
                         density="compact", hide_details=True)
            v3.VCheckbox(label="Keep largest 3D component", id="medsam2-largest-component",
                         v_model=("medsam2_largest_component",), density="compact", hide_details=True)
        v3.VSelect(label="Write", items=("write_items", _items(WRITE_MODES)), v_model=("medsam2_write_mode",),
                   id="medsam2-write-mode", density="compact", hide_details=True, classes="my-2")
        v3.VSelect(label="Intensities", items=("windowing_items", _items(WINDOWINGS)), v_model=("medsam2_windowing",),
                   id="medsam2-windowing", density="compact", hide_details=True, classes="my-2")

        html.Div("Propagation", classes="text-subtitle-2 mt-4")
        v3.VSelect(label="Direction", items=("direction_items", _items(DIRECTIONS)), v_model=("medsam2_direction",),
                   id="medsam2-direction", density="compact", hide_details=True, classes="my-2")
        with html.Div(style="display: flex; gap: 8px; align-items: center;"):
            v3.VCheckbox(label="Only slices", v_model=("medsam2_range_on",), density="compact", hide_details=True)
            for name in ("medsam2_range_first", "medsam2_range_last"):
                v3.VTextField(v_model=(name,), type="number", min=0, density="compact", hide_details=True,
                              disabled=("!medsam2_range_on",), style="max-width: 80px;")
        with html.Div(style="display: flex; gap: 8px; align-items: center;"):
            v3.VCheckbox(label="Early stop after", v_model=("medsam2_early_stop_on",), density="compact",
                         hide_details=True)
            v3.VTextField(v_model=("medsam2_early_stop_slices",), type="number", min=1, suffix="slices",
                          density="compact", hide_details=True, disabled=("!medsam2_early_stop_on",),
                          style="max-width: 110px;")

        html.Div("Model", classes="text-subtitle-2 mt-4")
        v3.VSelect(label="Precision", items=("precision_items", list(PRECISIONS)), v_model=("medsam2_precision",),
                   id="medsam2-precision", density="compact", hide_details=True, classes="my-2")
