"""``--pool-namespace`` (and ``--pool-group``) as ``kvgate serve`` and ``kvgate epp`` both read them (one
rule for both doors).

The reference EPP's order (GIE ``cmd/epp/runner``): the flag when non-empty, else the ``NAMESPACE``
environment variable (its chart and llm-d's set it from the pod's own namespace), else ``default``. The
flag names the namespace of ``--pool-name``'s InferencePool only: given without ``--pool-name`` it is
refused (a config file's pool names its own namespace); the environment variable is ambient, so it is
only read where ``--pool-name`` names a pool.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from kvgate.k8s import resources as R

FLAG = "--pool-namespace"
NAMESPACE_ENV = "NAMESPACE"
DEFAULT_NAMESPACE = "default"
# What both doors say, after the flag's name, for the flag given without --pool-name.
WITHOUT_POOL_NAME = "only with --pool-name (a config file's pool names its InferencePool's namespace)"


def pool_namespace(flag: str | None, env: Mapping[str, str] | None = None) -> str:
    """The InferencePool's namespace: ``flag``, else ``$NAMESPACE``, else ``default`` (empty = not given)."""
    env = os.environ if env is None else env
    return flag or env.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE


def refused(flag: str | None, pool_name: str | None) -> str | None:
    """Why ``--pool-namespace`` cannot apply (given, non-empty, without ``--pool-name``), or None."""
    return WITHOUT_POOL_NAME if flag and not pool_name else None


def not_the_files(flag: str | None, pool: str, file_namespace: str) -> str | None:
    """Why ``--pool-namespace`` (given) cannot apply beside a config file whose pool ``pool`` names its
    InferencePool in ``file_namespace``, or None (not given, or the same). Refused, not honoured: the file
    names the InferencePool, name and namespace, for ``kvgate serve`` and ``kvgate epp`` alike, and
    ``--pool-name`` there only picks the pool; a flag that moved the watch to another namespace would leave
    the two doors watching different pools under one file (before fixk8s28 it was ignored, silently)."""
    if not flag or flag == file_namespace:
        return None
    # (``file_namespace`` is "default" where the file leaves it out: said so, not "the config names")
    return (
        f"{flag!r} is not the namespace of pool {pool!r}'s InferencePool in the config ({file_namespace!r}: "
        "its inferencePool.namespace, 'default' where the file leaves it out, as kvgate serve reads it); "
        "drop the flag, or set the pool's inferencePool.namespace"
    )


# The pool flags given where no pool is watched: the same words in both doors (review s28-rev-k8s28 N2).
NONE_WATCHED = (
    "only with an InferencePool to watch (none is: the endpoints are listed, by --endpoints or a config "
    "pool's endpoints)"
)


# ``--pool-group``: the reference EPP's flag (GIE ``cmd/epp/runner``); its values: the InferencePool groups.
GROUP_FLAG = "--pool-group"
GROUPS = sorted(R.POOL_GROUPS)
GROUP_HELP = (
    f"the InferencePool's API group (default {R.INFERENCE_POOL.group}, v1; {R.LEGACY_GROUP}: the older "
    "v1alpha2 pool, as the reference EPP's flag)"
)
