"""Bounded ``model_name`` / ``target_model_name`` label values for the doors no model list bounds.

``kvgate serve`` labels its per-request metrics by model freely: its models come from the config, and a
request for any other is refused (404) before it is counted under a model. The ext_proc door (whose
``--model`` may be ``*``) and the multi-cluster gateway (whose clusters file names no models) take any
model name a client sends, so a label per name would let clients grow the metrics without bound. Here a
name is its own label when the config names it (``--model``, adapters, the rewrite rules' models), or
once a model server has answered a request *sent to it under that name* with a 2xx (``served``): only
the name the server was asked for (a rewrite's target, never the client's name before the rewrite), and
only for a request whose body was parsed (a body-less request's model comes from a client header, which
no server checks). At most ``MAX_MODEL_LABELS`` names per process are learnt that way. Every other name
is reported as ``other``; an empty name (the request was refused before its model was known) stays
empty, as in ``kvgate serve``. A label once given is never taken away (counters stay monotonic).

A 2xx alone does not vouch for a name: a server that answers any ``model`` with a 2xx (kvgate's
simulator does; SGLang and others do not check it) would let a client teach it 16 made-up names, after
which a real model first served stayed ``other`` until the process restarted. So a door gives
``vouch``: whether the model servers themselves report serving the name (``kvgate epp``: a pod's
scraped metrics, their ``model_name`` label or a LoRA adapter; ``kvgate serve --clusters``: a cluster's
aggregate, ``PoolAggregate.models``). A name they do not list is not learnt. Only where none of them
reports any name (an engine whose metrics carry no ``model_name``, clusters whose gateways predate the
aggregate's ``models``) does a 2xx still teach one (``vouch`` answers None): the old bound, no better.
The cost otherwise: a model's errors before its first 2xx in this process are counted under ``other``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

MAX_MODEL_LABELS = 16
OTHER_MODEL = "other"
ANY_MODEL = "*"

# name -> True: the model servers report serving it; False: they report names, not this one; None: none
# of them reports any name (nothing to check a name against).
Vouch = Callable[[str], bool | None]


class ModelLabels:
    def __init__(
        self, known: Iterable[str] = (), size: int = MAX_MODEL_LABELS, vouch: Vouch | None = None
    ) -> None:
        self.known = frozenset(m for m in known if m and m != ANY_MODEL)
        self.size = size
        self.learnt: set[str] = set()
        self.vouch = vouch  # None: a 2xx teaches any name (a door with nothing to check names against)

    def know(self, names: Iterable[str]) -> None:
        """Names the configuration gives (rewrite rules, live too): labels of their own, never learnt."""
        self.known = self.known | {m for m in names if m and m != ANY_MODEL}

    def served(self, model: str) -> None:
        """A model server answered a request sent to it as ``model`` with a 2xx: it may earn its own
        label, if the model servers report serving it (``vouch``)."""
        if not model or model in self.known or model in self.learnt or len(self.learnt) >= self.size:
            return
        if self.vouch is None or self.vouch(model) is not False:
            self.learnt.add(model)

    def label(self, model: str) -> str:
        if not model or model in self.known or model in self.learnt:
            return model
        return OTHER_MODEL
