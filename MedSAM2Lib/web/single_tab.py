"""One tab at a time: trame-slicer keeps one scene per server process, so every tab connected to ``medsam2 web``
would see and edit the same segmentation, each tab's clicks fighting the other's.

Each page, when it opens, picks an identifier of its own (a client-only state variable, never sent to the server
or to other tabs) and claims the app with it. The first claim wins; the owner's identifier is shared state, so
every other tab sees that the app is in use elsewhere and covers itself with a notice that takes every click
and mouse event (the views included): it only watches. Its "Use it here" button takes the app over (the other
tab then shows the notice). When the owner's connection closes (wslink tells the server which connection
closed; a page's own "beforeunload" message does not get out: trame's connection lives in a worker that goes
with the page), the app is free and the tabs still open claim it again, the first one winning. This is the page
keeping a user from editing one scene from two tabs by mistake, not access control: whoever has the address
(and token) has the app.
"""

from __future__ import annotations

from typing import Optional

from trame.widgets import client, html
from trame_vuetify.widgets import vuetify3 as v3
from wslink.websocket import LinkProtocol

NOTICE = ("MedSAM2 is open in another tab or window. This app holds one scene for one user: that tab is "
          "segmenting, this one only shows it. Close the other tab, or use it here instead.")


class TabGuard:
    """Which tab owns the app (``medsam2_owner`` in the page's state; "" when none does), and the wslink connection
    it claimed it from."""

    def __init__(self, server) -> None:
        self.server = server
        self.web_app = None  # wslink's server, which knows the connection of the message being handled
        self.owner_connection: Optional[str] = None
        state = server.state
        state.medsam2_owner = ""
        state.medsam2_tab = ""  # each page's own identifier, set and kept in the page
        state.client_only("medsam2_tab")
        server.trigger("medsam2_claim")(self.claim)
        server.controller.on_server_bind.add(self._bind)
        server.add_protocol_to_configure(lambda root: root.registerLinkProtocol(_ClosedConnections(self)))

    @property
    def owner(self) -> Optional[str]:
        return self.server.state.medsam2_owner or None

    def claim(self, tab: str, take_over: bool = False) -> bool:
        """The tab ``tab`` asks for the app (on opening, when the app is free, or with "Use it here":
        ``take_over``); True if it has it."""
        if tab and (self.owner is None or take_over):
            self.owner_connection = self.web_app.last_active_client_id if self.web_app is not None else None
            with self.server.state as state:
                state.medsam2_owner = tab
        return self.owner == tab

    def connection_closed(self, connection: str) -> None:
        """A connection closed: if the owner's, the app is free (the open tabs claim it again)."""
        if connection == self.owner_connection:
            self.owner_connection = None
            with self.server.state as state:
                state.medsam2_owner = ""

    def add_notice(self) -> None:
        """The page's part (inside the layout): claim on opening and whenever the app is free, and the notice
        covering a tab that does not own the app."""
        client.ClientTriggers(
            mounted="medsam2_tab = Math.random().toString(36).slice(2) + Date.now().toString(36); "
                    "trigger('medsam2_claim', [medsam2_tab])")
        client.ClientStateChange(value="medsam2_owner", change="medsam2_owner || trigger('medsam2_claim', [medsam2_tab])")
        with html.Div(id="medsam2-other-tab", v_if="medsam2_owner && medsam2_owner !== medsam2_tab",
                      style="position: fixed; inset: 0; z-index: 10000; background: rgba(0, 0, 0, 0.55); "
                            "display: flex; align-items: center; justify-content: center;"):
            with v3.VCard(max_width=520, classes="pa-4"):
                v3.VCardText(NOTICE, id="medsam2-other-tab-text")
                with v3.VCardActions():
                    v3.VSpacer()
                    v3.VBtn("Use it here", id="medsam2-take-over",
                            click="trigger('medsam2_claim', [medsam2_tab, true])")

    def _bind(self, web_app) -> None:
        self.web_app = web_app


class _ClosedConnections(LinkProtocol):
    """Tells the guard when a browser's connection closes (wslink calls onClose with the connection's ID)."""

    def __init__(self, guard: TabGuard) -> None:
        super().__init__()
        self.guard = guard

    def onClose(self, client_id) -> None:  # noqa: N802 (wslink's name)
        self.guard.connection_closed(client_id)
