"""Bounded ``model_name`` / ``target_model_name`` label values for the doors no model list bounds.

``kvgate serve`` labels its per-request metrics by model freely: its models come from the config, and a
request for any other is refused (404) before it is counted under a model. The ext_proc door (whose
``--model`` may be ``*``) and the multi-cluster gateway (whose clusters file names no models) take any
model name a client sends, so a label per name would let clients grow the metrics without bound.

A name is its own label when the door knows it:

- the config names it (``--model``, adapters, the rewrite rules' models, live rules too: ``know``);
- the model servers report serving it now (``reported``: ``kvgate epp``'s pods' scraped metrics, their
  ``model_name`` label and LoRA adapters; the hub EPP's and ``kvgate serve --clusters``' cluster
  aggregates, ``PoolAggregate.models``). ``ReportedNames`` re-reads its servers at most once per
  ``REFRESH_S`` and rebuilds the set from what they report then, base model names before adapters, plus
  the names seen within the last ``KEEP_S``, at most ``MAX_REPORTED_NAMES``: a label check is a set
  lookup. A name no longer reported leaves the set (so adapter churn cannot lock a later base model
  out: review s14-final M1), and its label is ``other`` from then on unless the config names it or it
  was learnt; its series already exported stay, no longer growing (counters stay monotonic per series).

Those are labelled first and no other name can take their place. Any other name a model server answered
with a 2xx (``served``: the name the server was sent, a rewrite's target, never the client's name before
the rewrite; only for a request whose body was parsed) is learnt into the slots left of
``MAX_MODEL_LABELS`` by the reported names the config does not name and that were not learnt (a learnt
name later reported takes one slot). So a server that answers any ``model`` with a 2xx (SGLang and
others do not check it; kvgate's simulator refuses an unknown model with 404) lets a client fill only
those slots with made-up names, never push a real model into ``other``, and a real name no server reports
(vLLM's metrics carry only the first ``--served-model-name``; an adapter never seen running or waiting at
a scrape; a cluster on an older kvgate, whose aggregate lists no names) is still learnt while slots are
left: name such names in the config to be sure of their labels. A learnt name keeps its label for the
process's life; learnt names are never taken back, so reported names coming later can still take their
own labels on top. Every other name is reported as ``other``; an empty name (the request was refused
before its model was known) stays empty, as in ``kvgate serve``.

At any moment a door's labels are therefore at most: the config's names, plus ``MAX_REPORTED_NAMES``
(256) reported, plus ``MAX_MODEL_LABELS`` (16) learnt, plus ``other`` and the empty name; each of
``model_name`` and ``target_model_name`` takes its values from these. Only names the model servers
report (not a client) can add labels past that over a process's life, as they come and go.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Set

MAX_MODEL_LABELS = 16
MAX_REPORTED_NAMES = 256  # names the model servers report, kept per door (each one a label)
MAX_MODEL_CHARS = 256  # a reported name longer than this is no label
REFRESH_S = 1.0  # ``ReportedNames`` walks its servers at most this often
KEEP_S = 300.0  # a name no longer reported keeps its label this long (``ReportedNames``)
OTHER_MODEL = "other"
ANY_MODEL = "*"


class ReportedNames:
    """The model names a door's servers report serving now (``walk``), as one set, re-read at most once
    per ``refresh_s`` of ``clock`` (between re-reads a check costs a set lookup, not a walk per request).

    Each re-read rebuilds the set from what the servers report then, not from what they ever reported
    (review s14-final M1: a set kept since start, first come first kept, was filled by adapter churn and
    shut a later base model out for good): the names of this walk in its order (``walk`` yields base
    model names before adapters), then the names seen within the last ``keep_s`` but not in this walk,
    the most recently seen first (an adapter idle at one scrape keeps its label a while), at most ``cap``.
    A name not seen for ``keep_s``, or cut by newer ones, leaves the set: its label is ``other`` from
    then on (its series already exported stay, no longer growing), unless the config names it or it was
    learnt (``ModelLabels``)."""

    def __init__(
        self,
        walk: Callable[[], Iterable[str]],
        clock: Callable[[], float],
        cap: int = MAX_REPORTED_NAMES,
        refresh_s: float = REFRESH_S,
        keep_s: float = KEEP_S,
    ) -> None:
        self.walk = walk
        self.clock = clock
        self.cap = cap
        self.refresh_s = refresh_s
        self.keep_s = keep_s
        self.names: frozenset[str] = frozenset()
        self._seen: dict[str, float] = {}  # the names in ``names`` -> when last walked
        self._at: float | None = None

    def __call__(self) -> Set[str]:
        now = self.clock()
        if self._at is not None and now - self._at < self.refresh_s:
            return self.names
        self._at = now
        seen: dict[str, float] = {}
        for name in self.walk():
            if len(seen) >= self.cap:
                break
            if name and name != ANY_MODEL and len(name) <= MAX_MODEL_CHARS and name not in seen:
                seen[name] = now
        if len(seen) < self.cap:
            recent = sorted(
                ((at, m) for m, at in self._seen.items() if m not in seen and now - at < self.keep_s),
                reverse=True,
            )
            for at, m in recent[: self.cap - len(seen)]:
                seen[m] = at
        self._seen = seen
        if self.names != seen.keys():  # (a new object only on a change: ``ModelLabels`` recounts then)
            self.names = frozenset(seen)
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
        # (reported, known, len(learnt)) -> the reported names neither known nor learnt
        self._count: tuple[object, object, int, int] = (None, None, 0, 0)

    def know(self, names: Iterable[str]) -> None:
        """Names the configuration gives (rewrite rules, live too): labels of their own, never learnt."""
        self.known = self.known | {m for m in names if m and m != ANY_MODEL}

    def _reported(self) -> Set[str]:
        return self.reported() if self.reported is not None else frozenset()

    def _free(self, reported: Set[str]) -> int:
        """The slots of ``size`` left for learnt names: the reported names neither the config names nor
        were learnt take theirs first (a learnt name later reported takes one slot, not two: review
        s14-final L2)."""
        r, k, n_learnt, n = self._count
        if r is not reported or k is not self.known or n_learnt != len(self.learnt):
            n = sum(1 for m in reported if m not in self.known and m not in self.learnt)
            self._count = (reported, self.known, len(self.learnt), n)
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
