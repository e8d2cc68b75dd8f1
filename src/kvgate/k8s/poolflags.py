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


# ``--pool-group``: the reference EPP's flag (GIE ``cmd/epp/runner``); its values: the InferencePool groups.
GROUP_FLAG = "--pool-group"
GROUPS = sorted(R.POOL_GROUPS)
GROUP_HELP = (
    f"the InferencePool's API group (default {R.INFERENCE_POOL.group}, v1; {R.LEGACY_GROUP}: the older "
    "v1alpha2 pool, as the reference EPP's flag)"
)
