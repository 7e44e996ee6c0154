"""uvicorn's h11 protocol with a request-read timeout.

uvicorn closes a keep-alive connection that stays idle after a response (`timeout_keep_alive`), but a
connection that opens and then sends nothing, or half a request line and headers (a slowloris client, or a
peer that vanished without a FIN), is kept forever. Here such a connection must deliver a complete set of
request headers within `HEADER_TIMEOUT` seconds of opening or of its previous response, or it is closed.
A request that is being answered is never cut: the check only closes connections with no request in
progress. Body reads that stall are bounded separately, in `guard.py`.
"""

from __future__ import annotations

from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT = 30.0  # seconds for the request line and headers to arrive (`--header-timeout`)


class TimedH11Protocol(H11Protocol):
    header_timeout = HEADER_TIMEOUT

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._last_activity = self.loop.time()
        self._header_timer = self.loop.call_later(self.header_timeout, self._check)

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before:  # the headers of a new request arrived
            self._last_activity = self.loop.time()

    def on_response_complete(self) -> None:
        self._last_activity = self.loop.time()
        super().on_response_complete()

    def _check(self) -> None:
        if self.transport.is_closing():
            return
        idle = self.cycle is None or self.cycle.response_complete
        waited = self.loop.time() - self._last_activity
        if idle and waited >= self.header_timeout:
            self.transport.close()  # no complete request headers for header_timeout seconds
            return
        self._header_timer = self.loop.call_later(max(self.header_timeout - waited, 1.0) if idle
                                                  else self.header_timeout, self._check)

    def connection_lost(self, exc) -> None:
        self._header_timer.cancel()
        super().connection_lost(exc)


def with_header_timeout(seconds: float) -> type[TimedH11Protocol]:
    """The protocol class with its own header timeout (uvicorn takes a class, not an instance)."""
    return type("TimedH11Protocol", (TimedH11Protocol,), {"header_timeout": seconds})
