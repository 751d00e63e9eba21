"""One tab at a time: trame-slicer keeps one scene per server process, so every tab connected to ``medsam2 web``
would see and edit the same segmentation, each tab's clicks fighting the other's.

Each page, when it opens, picks an identifier of its own (a client-only state variable, never sent to the server
or to other tabs) and claims the app with it. The first claim wins; the owner's identifier is shared state, so
every other tab sees that the app is in use elsewhere and covers itself with a notice that takes every click
and mouse event (the views included): it only watches. Its "Use it here" button takes the app over (the other
tab then shows the notice). A page that closes gives the app back. This is the page keeping a user from editing
one scene from two tabs by mistake, not access control: whoever has the address (and token) has the app.
"""

from __future__ import annotations

from typing import Optional

from trame.widgets import client, html
from trame_vuetify.widgets import vuetify3 as v3

NOTICE = ("MedSAM2 is open in another tab or window. This app holds one scene for one user: that tab is "
          "segmenting, this one only shows it. Close the other tab, or use it here instead.")


class TabGuard:
    """Which tab owns the app (``medsam2_owner`` in the page's state; "" when none does)."""

    def __init__(self, server) -> None:
        self.server = server
        state = server.state
        state.medsam2_owner = ""
        state.medsam2_tab = ""  # each page's own identifier, set and kept in the page
        state.client_only("medsam2_tab")
        server.trigger("medsam2_claim")(self.claim)
        server.trigger("medsam2_release")(self.release)

    @property
    def owner(self) -> Optional[str]:
        return self.server.state.medsam2_owner or None

    def claim(self, tab: str, take_over: bool = False) -> bool:
        """The tab ``tab`` asks for the app (on opening, or with "Use it here": ``take_over``); True if it has it."""
        if tab and (self.owner is None or take_over):
            with self.server.state as state:
                state.medsam2_owner = tab
        return self.owner == tab

    def release(self, tab: str) -> None:
        """The tab ``tab`` closes: if it owned the app, no tab does."""
        if tab and self.owner == tab:
            with self.server.state as state:
                state.medsam2_owner = ""

    def add_notice(self) -> None:
        """The page's part (inside the layout): claim on opening, release on closing, and the notice covering a
        tab that does not own the app."""
        client.ClientTriggers(
            mounted="medsam2_tab = Math.random().toString(36).slice(2) + Date.now().toString(36); "
                    "trigger('medsam2_claim', [medsam2_tab])",
            exit="trigger('medsam2_release', [medsam2_tab])")
        with html.Div(id="medsam2-other-tab", v_if="medsam2_owner && medsam2_owner !== medsam2_tab",
                      style="position: fixed; inset: 0; z-index: 10000; background: rgba(0, 0, 0, 0.55); "
                            "display: flex; align-items: center; justify-content: center;"):
            with v3.VCard(max_width=520, classes="pa-4"):
                v3.VCardText(NOTICE, id="medsam2-other-tab-text")
                with v3.VCardActions():
                    v3.VSpacer()
                    v3.VBtn("Use it here", id="medsam2-take-over",
                            click="trigger('medsam2_claim', [medsam2_tab, true])")
