"""A name server that does not answer, for the hub probe's and the aggregate fetcher's lookup tests."""

from __future__ import annotations

import socket
import threading
from typing import Any


class HungResolver:
    """A ``socket.getaddrinfo`` whose lookups of names ending in ``suffix`` hang until ``release`` is set
    (at most 60 s), then fail EAI_AGAIN; every other name resolves for real (the ``getaddrinfo`` in place
    when this was made). ``running``: [lookups of such names in it now, most at once]."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self.release = threading.Event()
        self.running = [0, 0]
        self._real = socket.getaddrinfo
        self._lock = threading.Lock()

    def __call__(self, host: Any, *a: Any, **k: Any) -> Any:
        if not str(host).endswith(self.suffix):
            return self._real(host, *a, **k)
        with self._lock:
            self.running[0] += 1
            self.running[1] = max(self.running)
        try:
            self.release.wait(60)  # (a name server that does not answer)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        finally:
            with self._lock:
                self.running[0] -= 1
