"""The upstream client's exceptions (``kvgate.gateway.upstream`` re-exports them): a module of their own,
never compiled, because mypyc cannot compile a subclass of ``OSError`` and the client is in the optional
compiled build (``make compiled``)."""

from __future__ import annotations


class UpstreamError(OSError):
    """Connection lost, malformed response, or timeout on the upstream leg."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    pass


class StaleConnection(UpstreamError):
    """A connection that had carried a request before failed (FIN or RST) before any byte of this
    request's answer: most likely the server closed it while idle as the request was written, so it
    never read it. Raised by ``request(..., resend=False)``: the caller resends it as an attempt of its
    own (the proxy: on a new connection to the same endpoint, within ``maxAttempts``; qa24 F2)."""


class ReadTimeout(UpstreamTimeout):
    """No answer byte in time after the request was written: the server may be working on it (a
    non-streamed generation sends nothing until it is done), so the proxy does not run it again
    elsewhere. A connect timeout is a plain ``UpstreamTimeout`` (the request never left)."""


class DeadlinePassed(UpstreamTimeout):
    """The request's ``deadline`` came before it was written (a connect that outlasted it, or ended
    by it): nothing was sent, so the server did no work and is not at fault (review s18-fixes-c M1)."""


class TruncatedBody(UpstreamError):
    """A body framed by the close (no Content-Length, not chunked) ended, by a clean close, before what
    its media type says is its end (the proxy: a JSON body that does not parse): the server died
    mid-body."""
