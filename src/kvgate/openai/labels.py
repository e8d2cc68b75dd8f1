"""Bounded ``model_name`` / ``target_model_name`` label values for the doors no model list bounds.

``kvgate serve`` labels its per-request metrics by model freely: its models come from the config, and a
request for any other is refused (404) before it is counted under a model. The ext_proc door (whose
``--model`` may be ``*``) and the multi-cluster gateway (whose clusters file names no models) take any
model name a client sends, so a label per name would let clients grow the metrics without bound.

A name is its own label when the door knows it:

- the config names it (``--model``, adapters, the rewrite rules' models, live rules too: ``know``);
- the model servers report serving it (``reported``: ``kvgate epp``'s pods' scraped metrics, their
  ``model_name`` label and LoRA adapters; the hub EPP's and ``kvgate serve --clusters``' cluster
  aggregates, ``PoolAggregate.models``). ``ReportedNames`` keeps each name once seen (a label once given
  stays), at most ``MAX_REPORTED_NAMES``, and walks its servers at most once per ``REFRESH_S``: a label
  check is a set lookup.

Those are labelled first and no other name can take their place. Any other name a model server answered
with a 2xx (``served``: the name the server was sent, a rewrite's target, never the client's name before
the rewrite; only for a request whose body was parsed) is learnt into the slots left of
``MAX_MODEL_LABELS`` by the reported names the config does not name. So a server that answers any
``model`` with a 2xx (kvgate's simulator; SGLang and others do not check it) lets a client fill only
those slots with made-up names, never push a real model into ``other``, and a real name no server reports
(vLLM's metrics carry only the first ``--served-model-name``; an adapter never seen running or waiting at
a scrape; a cluster on an older kvgate, whose aggregate lists no names) is still learnt while slots are
left: name such names in the config to be sure of their labels. Every other name is reported as
``other``; an empty name (the request was refused before its model was known) stays empty, as in
``kvgate serve``. A label once given is never taken away (counters stay monotonic).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Set

MAX_MODEL_LABELS = 16
MAX_REPORTED_NAMES = 256  # names the model servers report, kept per door (each one a label)
MAX_MODEL_CHARS = 256  # a reported name longer than this is no label
REFRESH_S = 1.0  # ``ReportedNames`` walks its servers at most this often
OTHER_MODEL = "other"
ANY_MODEL = "*"


class ReportedNames:
    """The model names a door's servers report serving (``walk``), as one set: a name once reported is
    kept (at most ``cap``, the first ones); the servers are walked again only when ``clock`` has moved on
    ``refresh_s`` since the last walk, so a check costs a set lookup, not a walk per request."""

    def __init__(
        self,
        walk: Callable[[], Iterable[str]],
        clock: Callable[[], float],
        cap: int = MAX_REPORTED_NAMES,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self.walk = walk
        self.clock = clock
        self.cap = cap
        self.refresh_s = refresh_s
        self.names: frozenset[str] = frozenset()
        self._at: float | None = None

    def __call__(self) -> Set[str]:
        now = self.clock()
        if self._at is not None and now - self._at < self.refresh_s:
            return self.names
        self._at = now
        if len(self.names) >= self.cap:
            return self.names
        add = set()
        room = self.cap - len(self.names)
        for name in self.walk():
            if name and name != ANY_MODEL and len(name) <= MAX_MODEL_CHARS and name not in self.names:
                add.add(name)
                if len(add) >= room:
                    break
        if add:
            self.names = self.names | add  # (a new object: ``ModelLabels`` recounts its free slots)
        return self.names


class ModelLabels:
    def __init__(
        self,
        known: Iterable[str] = (),
        size: int = MAX_MODEL_LABELS,
        reported: Callable[[], Set[str]] | None = None,
    ) -> None:
        self.known = frozenset(m for m in known if m and m != ANY_MODEL)
        self.size = size
        self.learnt: set[str] = set()
        self.reported = reported  # the names the model servers report (``ReportedNames``); None: none
        self._count: tuple[object, object, int] = (None, None, 0)  # (reported, known) -> reported less known

    def know(self, names: Iterable[str]) -> None:
        """Names the configuration gives (rewrite rules, live too): labels of their own, never learnt."""
        self.known = self.known | {m for m in names if m and m != ANY_MODEL}

    def _reported(self) -> Set[str]:
        return self.reported() if self.reported is not None else frozenset()

    def _free(self, reported: Set[str]) -> int:
        """The slots of ``size`` left for learnt names: the reported names the config does not name take
        theirs first."""
        r, k, n = self._count
        if r is not reported or k is not self.known:
            n = len(reported) if not self.known else sum(1 for m in reported if m not in self.known)
            self._count = (reported, self.known, n)
        return self.size - n - len(self.learnt)

    def served(self, model: str) -> None:
        """A model server answered a request sent to it as ``model`` with a 2xx: a name the door does not
        know earns its own label while slots are left."""
        if not model or model in self.known or model in self.learnt:
            return
        reported = self._reported()
        if model not in reported and self._free(reported) > 0:
            self.learnt.add(model)

    def label(self, model: str) -> str:
        if not model or model in self.known or model in self.learnt or model in self._reported():
            return model
        return OTHER_MODEL
