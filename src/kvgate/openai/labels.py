"""Bounded ``model_name`` / ``target_model_name`` label values for the doors no model list bounds.

``kvgate serve`` labels its per-request metrics by model freely: its models come from the config, and a
request for any other is refused (404) before it is counted under a model, unless a rewrite rule routes
names the config does not list (one with no ``matches``; Kubernetes' ``InferenceModelRewrite``s, live):
then it bounds them here too, the live rules' names as ``reported`` (``gateway.server``; doors16). The
ext_proc door (whose
``--model`` may be ``*``) and the multi-cluster gateway (whose clusters file names no models) take any
model name a client sends, so a label per name would let clients grow the metrics without bound.

A name is its own label when the door knows it:

- the config names it (``--model``, adapters, the rewrite rules' models: the live rules' once they replace
  the file's, ``set_rules``);
- the model servers report serving it now (``reported``: ``kvgate epp``'s pods' scraped metrics, their
  ``model_name`` label and LoRA adapters; the hub EPP's and ``kvgate serve --clusters``' cluster
  aggregates, ``PoolAggregate.models``). ``ReportedNames`` re-reads its servers at most once per
  ``REFRESH_S`` and rebuilds the set from what they report then, base model names before adapters, plus
  the names seen within the last ``KEEP_S``, at most ``MAX_REPORTED_NAMES``: a label check is a set
  lookup. A name no longer reported leaves the set (so adapter churn cannot lock a later base model
  out: review s14-final M1), and its label is ``other`` from then on unless the config names it or it
  is learnt. The names kept are kept per source (``kept_per_source``): per pod for ``kvgate epp``
  (``extproc.metrics.models_reported``; doors16, one history for all pods before), per cluster for a
  multi-cluster door (``multicluster.state.models_listed``): a source's kept names are at most 64 less
  the names it reports now, and they come after every name any source reports now, so a pod churning
  names churns only its own kept names, never another's; what the sources report *now* is not bounded
  per source (only by ``MAX_REPORTED_NAMES`` in all), so names reported now (many pods churning at
  once, one pod with ~200 waiting adapters) can still push every kept name out of the set (review
  s16-doors L5).

Those are labelled first and no other name can take their place. Any other name a model server answered
with a 2xx (``served``: the name the server was sent, a rewrite's target, never the client's name before
the rewrite; only for a request whose body was parsed) is learnt into the slots left of
``MAX_MODEL_LABELS`` by the reported names the config does not name and that were not learnt (a learnt
name later reported takes one slot). So a server that answers any ``model`` with a 2xx (SGLang and
others do not check it; kvgate's simulator refuses an unknown model with 404) lets a client fill only
those slots with made-up names, never push a real model into ``other``, and a real name no server reports
(vLLM's metrics carry only the first ``--served-model-name``; an adapter never seen running or waiting at
a scrape; a cluster on an older kvgate, whose aggregate lists no names) is still learnt while slots are
left: name such names in the config to be sure of their labels. A learnt name keeps its label while it
is used (below); learnt names are not taken back for reported names coming later, which take their own
labels on top. Every other name is reported as ``other``; an empty name (the request was refused
before its model was known) stays empty, as in ``kvgate serve``. The name ``other`` itself (a client's,
a server's report) is never learnt, reported or seen: it is the overflow label, never removed (review
s15-labels H1: learnt, it was swept with every unlabelled name's series).

At any moment a door's labels are therefore at most: the config's names, plus ``MAX_REPORTED_NAMES``
(256) reported, plus ``MAX_MODEL_LABELS`` (16) learnt, plus ``other`` and the empty name (plus the
names owed to requests in flight when they left the reported set, below: at most one per such request,
to its end); each of
``model_name`` and ``target_model_name`` takes its values from these.

Series are removed (labels15; before, every name that ever had a label kept its series for the
process's life, so LoRA adapter churn grew the exposition without bound). A name the config does not
name is *seen* when a request is labelled with it, when a model server answers it with a 2xx, and at each
``sweep`` while it is in the reported set or a request under it is in flight (``hold`` at the request's
start, ``drop`` at its end: a learnt name only a stream longer than ``GRACE_S`` uses keeps its label and
series to the stream's end; review s15-labels L2; and a name that was a label and is no longer one, no
longer reported, stays the label of the requests in flight under it when it left the reported set to
their end: doors16; only theirs, as many ends as were in flight then (``_owed``), never a new request's
renewal: review s16-doors M3; exactly theirs where the door labels and drops a request in the task that
held it, as the three doors do: each ``hold`` numbered, the name's retirement marks the last number, a
request numbered after it is ``other`` whenever it ends (doors18; before, a new request whose end came
before an older one's took one of those ends, the older one then counted under ``other``; a caller outside
any task, or a task holding the name twice, still gets that count). A name
not seen for ``GRACE_S`` (300 s) loses its series in
every collector of the door that carries ``model_name`` / ``target_model_name`` (``forget``: the
``inference_objective_*`` families, ``kvgate_multicluster_requests_total``), and a learnt name its slot.
So an adapter's series go at most ``KEEP_S`` + ``GRACE_S`` (10 minutes) after its servers last reported
it and a request last used it. Names that are no labels any more but not yet ``GRACE_S`` unseen keep
their series, at most ``MAX_RETIRED_NAMES`` (256) of them: past that the longest unseen go at once, so
the series carry at most config + 256 + 16 + 256 names (+ ``other``, empty) at every moment, however
fast names come and go (plus the names of requests in flight). ``sweep`` runs from ``label`` at most once
per ``REFRESH_S`` and from each scrape, O(names + series) each time: a request costs a clock read and a
few dict operations, and at most once a second one request pays the sweep (O(labels + series); review
s15-labels L4). ``grace_s`` may be ``inf`` (``--model-series-grace inf``): no name loses its series for
being unseen; names no longer labels still go past ``MAX_RETIRED_NAMES``.

Prometheus semantics: a removed series is gone from the next scrape (Prometheus marks it stale); a name
that comes back is a new series from 0, which ``rate()`` / ``increase()`` read as a counter reset (the
first request after the return is not counted by ``increase()``, as for any new series). The config's
names, ``other`` and the empty label are never removed. ``kvgate serve`` with config names only removes
none (a config reload does not drop a model: ``models`` is restart-to-apply).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence, Set

from kvgate.stickylabels import CANDIDATES, MAX_LABELS, OTHER, PROMOTE_AT, StickyLabels

MAX_MODEL_LABELS = 16
MAX_REPORTED_NAMES = 256  # names the model servers report, kept per door (each one a label)
MAX_MODEL_CHARS = 256  # a reported name longer than this is no label
REFRESH_S = 1.0  # ``ReportedNames`` walks its servers at most this often
KEEP_S = 300.0  # a name no longer reported keeps its label this long (``ReportedNames``)
GRACE_S = 300.0  # a name neither known, reported nor seen on a request this long loses its series
MAX_RETIRED_NAMES = 256  # names no longer labels whose series wait out GRACE_S, at most (oldest go first)
# A source's (a pod's, a cluster's) names reported now plus its kept names, at most: bounds its kept names
# (this less what it reports now), not what it reports now (``kept_per_source``).
MAX_SOURCE_NAMES = 64
OTHER_MODEL = "other"
ANY_MODEL = "*"
# Never a name of its own, whoever reports, answers or sends it: ``*`` (any model) and ``other`` (the
# overflow label: a name learnt, reported or seen as ``other`` would be swept with every unlabelled
# name's series under it; review s15-labels H1).
_NO_NAMES = frozenset((ANY_MODEL, OTHER_MODEL))


class ReportedNames:
    """The model names a door's servers report serving now (``walk``), as one set, re-read at most once
    per ``refresh_s`` of ``clock`` (between re-reads a check costs a set lookup, not a walk per request).

    Each re-read rebuilds the set from what the servers report then, not from what they ever reported
    (review s14-final M1: a set kept since start, first come first kept, was filled by adapter churn and
    shut a later base model out for good): the names of this walk in its order (``walk`` yields base
    model names before adapters), then the names seen within the last ``keep_s`` but not in this walk,
    the most recently seen first (an adapter idle at one scrape keeps its label a while), at most ``cap``.
    A name not seen for ``keep_s``, or cut by newer ones, leaves the set: its label is ``other`` from
    then on (its series go ``GRACE_S`` later), unless the config names it or it is learnt
    (``ModelLabels``)."""

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
            if name and name not in _NO_NAMES and len(name) <= MAX_MODEL_CHARS and name not in seen:
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


def kept_per_source(
    walk: Callable[[], Iterable[tuple[Hashable, Sequence[Iterable[str]]]]],
    clock: Callable[[], float],
    cap: int = MAX_SOURCE_NAMES,
    keep_s: float = KEEP_S,
    keep_gone: bool = True,
) -> ReportedNames:
    """A ``ReportedNames`` whose names no longer reported are kept per source: ``walk`` yields each source
    (a pod's address, a cluster's name) with its names now, in tiers (a pod: base models, running adapters,
    waiting adapters; a cluster: one list). Each source's names kept are at most ``cap`` less the names it
    reports now: those it reported within ``keep_s`` but not now, most recently reported first (an adapter
    idle at one scrape keeps its label a while); what a source reports now is never cut here (only by
    ``MAX_REPORTED_NAMES``, below; a cluster's list is 64 at most). So a source that reports different
    names on every walk churns only its own share of kept names, and its past names never take another
    source's kept names' places (one history shared by all sources, the most recently seen first, let a
    churning source's last few lists take every kept place: labels15 for clusters, doors16 for an EPP's
    pods). The order, for the cut at ``MAX_REPORTED_NAMES``: every source's latest names tier by tier
    (within a tier, rank by rank: every source's first name, then every second one, ...), then the kept
    names rank by rank, those of the sources still walked before those of sources gone. A source no
    longer walked keeps its kept names for the rest of their ``keep_s`` with ``keep_gone`` (a pod
    replaced: its adapters keep their labels as they did with one shared history), else it loses them at
    once (a cluster dropped from the clusters file); at most ``MAX_REPORTED_NAMES`` gone sources are
    kept, the most recently reporting ones."""
    # source -> its names now and kept -> when last reported (at most ``cap``, or its names now, up to
    # ``MAX_REPORTED_NAMES``, each)
    history: dict[Hashable, dict[str, float]] = {}

    def _rank_by_rank(lists: list[list[str]]) -> Iterator[str]:
        for rank in range(max((len(ms) for ms in lists), default=0)):
            for ms in lists:
                if rank < len(ms):
                    yield ms[rank]

    def _kept(names: dict[str, float], old: dict[str, float], now: float) -> list[str]:
        """``old``'s names not in ``names`` reported within ``keep_s``, most recent first, into the
        places ``names`` leaves of ``cap`` (added to ``names``)."""
        room = cap - len(names)
        if room <= 0 or not old:
            return []
        recent = sorted(
            ((at, m) for m, at in old.items() if m not in names and now - at < keep_s), reverse=True
        )
        kept = [m for _at, m in recent[:room]]
        names.update((m, at) for at, m in recent[:room])
        return kept

    def names() -> Iterator[str]:
        now = clock()
        tiers: list[list[list[str]]] = []  # tier -> source -> its latest names of that tier
        kept: list[list[str]] = []
        seen: dict[Hashable, dict[str, float]] = {}
        for key, lists in walk():
            mine: dict[str, float] = {}
            for t, ms in enumerate(lists):
                tier = []
                for m in ms:
                    if len(mine) >= MAX_REPORTED_NAMES:  # (past its 256th, none of a source's is in the cut)
                        break
                    if m and m not in _NO_NAMES and len(m) <= MAX_MODEL_CHARS and m not in mine:
                        mine[m] = now
                        tier.append(m)
                if t == len(tiers):
                    tiers.append([])
                tiers[t].append(tier)
            kept.append(_kept(mine, history.get(key, {}), now))
            seen[key] = mine
        if keep_gone:
            gone = sorted(
                (
                    (max(old.values()), i, key)
                    for i, (key, old) in enumerate(history.items())
                    if key not in seen and old
                ),
                reverse=True,
            )[:MAX_REPORTED_NAMES]
            for _at, _i, key in gone:
                mine = {}
                if k := _kept(mine, history[key], now):
                    kept.append(k)
                    seen[key] = mine
        history.clear()
        history.update(seen)
        for lists in tiers:
            yield from _rank_by_rank(lists)
        yield from _rank_by_rank(kept)

    # (keep_s 0: the names kept are kept here, per source)
    return ReportedNames(names, clock, keep_s=0.0)


class ModelLabels:
    """A door's ``model_name`` / ``target_model_name`` values (see the module's doc): ``label`` per request,
    ``served`` per 2xx, ``sweep`` at most once per ``sweep_s`` of ``clock`` (from ``label``, and from a
    scrape). ``forget``: the collectors' removals, each called with the names whose series go."""

    def __init__(
        self,
        known: Iterable[str] = (),
        size: int = MAX_MODEL_LABELS,
        reported: Callable[[], Set[str]] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        grace_s: float = GRACE_S,
        sweep_s: float = REFRESH_S,
        retired: int = MAX_RETIRED_NAMES,
        rules: Iterable[str] = (),
    ) -> None:
        """``known``: the config's names for good (models, adapters); ``rules``: the rewrite rules' names
        now (the config file's, until live rules replace them: ``set_rules``)."""
        self._fixed = frozenset(m for m in known if m and m != ANY_MODEL)
        self._rules = frozenset(m for m in rules if m and m != ANY_MODEL)
        self.known = self._fixed | self._rules
        self.size = size
        self.learnt: set[str] = set()
        self.reported = reported  # the names the model servers report (``ReportedNames``); None: none
        self.clock = clock
        self.grace_s = grace_s
        self.sweep_s = sweep_s
        self.retired = retired
        # The names not in ``known`` that ``label`` gave as their own label (so they may have series) ->
        # when last seen: labelled on a request, answered 2xx (``served``), or in the reported set at a
        # sweep. Bounded: the names that are labels now (reported, learnt) plus at most ``retired`` that
        # no longer are, waiting out ``grace_s`` (``sweep``).
        self.seen: dict[str, float] = {}
        self.forget: list[Callable[[Set[str]], None]] = []
        # name -> requests in flight under it (``hold`` / ``drop``): ``sweep`` counts them seen, so a name
        # keeps its label and series while a request uses it (review s15-labels L2). Bounded by the
        # requests in flight.
        self.inflight: dict[str, int] = {}
        # name -> ends still owed its label: a reported name that left the reported set (neither known
        # nor learnt) while requests were in flight under it is their label to their end (review
        # s16-doors M3: not every in-flight request's, or each new request revived it). Set to the
        # requests in flight when the set changed (seen before any request of the new set is counted,
        # ``_retire``), one less per ``drop`` under the name, gone at 0 or when it is reported again: so
        # at most that many more requests' ends (new ones' included) are labelled with it, never more.
        self._owed: dict[str, int] = {}
        # name -> the last ``hold`` number when it left (``_owed``'s entry made): the requests held under it
        # up to that number are the ones owed (doors18: exact, where a request's task is known). Holds are
        # numbered only while their name is owed: an unnumbered one is older than the mark.
        self._owed_mark: dict[str, int] = {}
        # task -> name -> (its hold's number, how many holds that task has under the name): who labels
        # and drops (one request's handler task). Weak: a task that ends without its ``drop`` (one made
        # from another task: the EPP's idle sweeper) leaves nothing behind.
        self._holds: weakref.WeakKeyDictionary[asyncio.Task[object], dict[str, tuple[int, int]]] = (
            weakref.WeakKeyDictionary()
        )
        self._seq = 0
        self._numbered = False  # (``_holds`` may hold a number: ``drop`` looks its task up only then)
        self._last_reported: Set[str] | None = None
        self._swept: float | None = None  # when ``sweep`` last ran (None: not yet)
        self._learnt_v = 0  # bumped at every change of ``learnt`` (``_free``'s cache key)
        # (reported, known, _learnt_v, n): n, the reported names neither known nor learnt, for the
        # reported set, known set and learnt version it was counted from.
        self._count: tuple[object, object, int, int] = (None, None, -1, 0)

    def know(self, names: Iterable[str]) -> None:
        """Names the configuration gives for good (models, adapters): labels of their own, never learnt."""
        self._fixed = self._fixed | {m for m in names if m and m != ANY_MODEL}
        self.known = self._fixed | self._rules

    def set_rules(self, names: Iterable[str]) -> None:
        """The rewrite rules' names now (live InferenceModelRewrites replacing the config file's rules, or
        the last live ones): labels of their own, never learnt. They *replace* the last rules' names (k8s17:
        ``know`` added them, so a config file's rule names, and every live rule's name ever seen, stayed
        labels with series for good): a name that leaves, not named by the config otherwise, is a label
        only while reported, learnt, or owed to the requests in flight under it now (as a name leaving the
        reported set, ``_retire``), and its series go ``grace_s`` after (``sweep``)."""
        rules = frozenset(m for m in names if m and m != ANY_MODEL)
        if rules == self._rules:
            return
        left = self.known - self._fixed - rules
        self._rules = rules
        self.known = self._fixed | rules
        for m in rules:
            self._owed.pop(m, None)  # (a label again)
            self._owed_mark.pop(m, None)
        now = self.clock()
        for m in left:
            # (its series wait out grace_s from now, as a retired name's: an older stamp, kept while the
            # name was known and so not stamped by ``label``, would remove them at the next sweep)
            self.seen[m] = now
            if m in self.inflight and m not in self.learnt and m not in self._owed:
                self._owe(m, self.inflight[m])

    def _reported(self) -> Set[str]:
        if self.reported is None:
            return frozenset()
        reported = self.reported()
        if reported is not self._last_reported:  # (a new set: at most once per refresh)
            self._retire(reported)
        return reported

    def _retire(self, reported: Set[str]) -> None:
        """The reported set changed to ``reported``: the names that left it and are no labels any more
        owe their label to the requests in flight under them now (``_owed``). O(names in flight)."""
        last, self._last_reported = self._last_reported, reported
        owed = self._owed
        for m in [m for m in owed if m in reported]:
            del owed[m]  # (a label again)
            self._owed_mark.pop(m, None)
        if last is None or not self.inflight:
            return
        for m, n in self.inflight.items():
            if (
                m in last
                and m not in reported
                and m not in self.learnt
                and m not in self.known
                and m not in owed
            ):
                self._owe(m, n)

    def _owe(self, name: str, n: int) -> None:
        """``name`` stops being a label with ``n`` requests in flight under it: their ends are owed it."""
        self._owed[name] = n
        self._owed_mark[name] = self._seq

    def _ticket(self, model: str) -> int | None:
        """The number of the current task's ``hold`` under ``model`` (None: not known here: no task, a
        task that did not hold it, or held it more than once)."""
        held = self._held_here()
        entry = None if held is None else held.get(model)
        return entry[0] if entry is not None and entry[1] == 1 else None

    def _held_here(self, make: bool = False) -> dict[str, tuple[int, int]] | None:
        """The current task's holds (``make``: created if none); None outside a task."""
        try:
            task = asyncio.current_task()
        except RuntimeError:  # (no running loop)
            return None
        if task is None:
            return None
        held = self._holds.get(task)
        if held is None and make:
            held = self._holds[task] = {}
        return held

    def _unnumber(self, model: str) -> None:
        """The current task's numbered hold under ``model`` (if any) ended; a task left with none goes."""
        try:
            task = asyncio.current_task()
        except RuntimeError:  # (no running loop)
            task = None
        held = None if task is None else self._holds.get(task)
        entry = None if held is None else held.get(model)
        if held is not None and entry is not None:
            if entry[1] > 1:
                held[model] = (entry[0], entry[1] - 1)
            else:
                del held[model]
                if not held:
                    del self._holds[task]  # type: ignore[arg-type]
        self._numbered = len(self._holds) > 0  # (tasks gone without their drop: gone from it too)

    def _owes(self, model: str) -> bool:
        """Whether the current request's end is one ``model`` owes: it was held by the mark (exact where
        its task is known); else as many ends as were owed, whichever requests end first."""
        ticket = self._ticket(model)
        return ticket is None or ticket <= self._owed_mark.get(model, ticket)

    def _free(self, reported: Set[str]) -> int:
        """The slots of ``size`` left for learnt names: the reported names neither the config names nor
        were learnt take theirs first (a learnt name later reported takes one slot, not two: review
        s14-final L2)."""
        r, k, v, n = self._count
        if r is not reported or k is not self.known or v != self._learnt_v:
            n = sum(1 for m in reported if m not in self.known and m not in self.learnt)
            self._count = (reported, self.known, self._learnt_v, n)
        return self.size - n - len(self.learnt)

    def served(self, model: str) -> None:
        """A model server answered a request sent to it as ``model`` with a 2xx: a name the door does not
        know earns its own label while slots are left (and a learnt one is seen)."""
        if not model or model in self.known or model == OTHER_MODEL:
            return
        if model in self.learnt:
            self.seen[model] = self.clock()
            return
        reported = self._reported()
        if model not in reported and self._free(reported) > 0:
            self.learnt.add(model)
            self._learnt_v += 1
            self.seen[model] = self.clock()

    def hold(self, model: str) -> None:
        """A request under ``model`` started (its ``drop`` follows at its end): O(1)."""
        if model:
            if self.reported is not None:
                self._reported()  # (a changed reported set is seen before this request counts)
            self.inflight[model] = self.inflight.get(model, 0) + 1
            if model not in self._owed:
                # Numbered only while the name is owed (review s18-doors L1: a task lookup per hold and
                # drop made them 6x dearer): an unnumbered hold started before the name left (or
                # outside a task, or held twice in it), which ``_owes`` counts among the owed.
                return
            self._seq += 1
            self._numbered = True
            held = self._held_here(make=True)
            if held is not None:  # (outside a task: this request's ends are counted, not numbered)
                entry = held.get(model)
                held[model] = (self._seq, 1) if entry is None else (entry[0], entry[1] + 1)

    def drop(self, model: str) -> None:
        """A request ``hold`` counted under ``model`` ended."""
        n = self.inflight.get(model)
        if n is None:
            return
        owed = self._owed.get(model)
        if owed is not None and self._owes(model):
            if owed > 1:
                self._owed[model] = owed - 1
            else:
                del self._owed[model]
                self._owed_mark.pop(model, None)
        if self._numbered:  # (numbered holds in flight: none while no name is owed)
            self._unnumber(model)
        if n > 1:
            self.inflight[model] = n - 1
        else:
            del self.inflight[model]

    def label(self, model: str) -> str:
        if not model or model in self.known:
            return model
        now = self.clock()
        if self._swept is None or now - self._swept >= self.sweep_s:
            self.sweep(now)
        if model == OTHER_MODEL:  # (the overflow label: never seen, so never swept)
            return model
        if model in self.learnt or model in self._reported():
            self.seen[model] = now
            return model
        if model in self._owed and self._owes(model):
            # (a label when the requests in flight under it started, no longer one: theirs to their
            # end, as its series are; doors16, review s16-doors M3: owed only to those, not to new ones;
            # doors18: exactly those, by their hold's number)
            self.seen[model] = now
            return model
        return OTHER_MODEL

    def sweep(self, now: float | None = None) -> None:
        """Removes the series of the names not seen for ``grace_s`` (and frees their learnt slots), and of
        the longest unseen names that are no labels any more past the ``retired`` most recently seen.
        From ``label`` at most once per ``sweep_s``, and from each scrape: O(labels) per call."""
        if now is None:
            now = self.clock()
        self._swept = now
        reported = self._reported()
        gone: set[str] = set()
        retired: list[tuple[float, str]] = []
        for m, at in list(self.seen.items()):
            if m in self.known:
                del self.seen[m]  # (named by the config since: its label for good, series kept)
            elif m in reported or m in self.inflight:  # (in flight: a request still uses it)
                self.seen[m] = now
            elif now - at >= self.grace_s:
                gone.add(m)
            elif m not in self.learnt:
                retired.append((at, m))
        if len(retired) > self.retired:
            retired.sort()
            gone.update(m for _at, m in retired[: len(retired) - self.retired])
        if not gone:
            return
        for m in gone:
            del self.seen[m]
        if not self.learnt.isdisjoint(gone):
            self.learnt -= gone
            self._learnt_v += 1
        for remove in self.forget:
            remove(gone)


MAX_FAIRNESS_LABELS = MAX_LABELS  # fairness ids with a label of their own, per door and process
FAIRNESS_CANDIDATES = CANDIDATES
FAIRNESS_PROMOTE_AT = PROMOTE_AT
OTHER_FAIRNESS = OTHER


class FairnessLabels(StickyLabels):
    """Bounded ``fairness_id`` label values for llm-d's per-request families (``llm_d_epp_request_*``,
    ``kvgate.openai.requeststats``), by the sticky rule flow control's labels use too
    (``kvgate.stickylabels``, below both packages): an id earns a label of its own once ``count`` saw it
    ``promote_at`` times (its guaranteed count in a Space-Saving table of ``candidates`` ids), at most
    ``size`` ids per door; any other id, and the id ``other`` itself, is ``other``. A label once given is
    never taken back, so counters stay monotonic; a spray of ids each sent fewer than ``promote_at``
    times is never labelled. The default flow (``default-flow``: a request that names none) is always its
    own label, outside the ``size``. ``count`` once per request (at its start); ``label`` is a set
    lookup."""

    __slots__ = ()
