"""The legacy InferenceModel (GIE v1alpha2: ``modelName``, ``criticality``, ``targetModels`` weights) is not
read by kvgate: a cluster that still sets criticality or splits traffic with it would get neither, silently.
At start, one API discovery read (``/apis/<group>/<version>``: allowed to every authenticated user, so no
RBAC rule is needed) says whether the cluster serves the kind; if so, one WARNING names what to use
instead (qa33a-F5)."""

from __future__ import annotations

import logging

import aiohttp

from kvgate.k8s import resources as R
from kvgate.k8s.client import KubeClient, KubeError

log = logging.getLogger(__name__)

GROUP_VERSION = f"{R.LEGACY_GROUP}/v1alpha2"
PLURAL = "inferencemodels"
MESSAGE = (
    "the cluster serves InferenceModel (%s): kvgate does not read InferenceModels (modelName, criticality, "
    "targetModels); use InferenceObjective (spec.priority, header x-gateway-inference-objective) and "
    "InferenceModelRewrite (spec.rules[].targets weights) instead (docs/kubernetes.md)"
)


async def warn_if_served(client: KubeClient) -> bool:
    """Log the WARNING when the API server serves InferenceModel; whether it does. Never raises for the
    server's answer (an unreachable server: discovery says so elsewhere)."""
    try:
        res = await client.request("GET", f"/apis/{GROUP_VERSION}", timeout_s=10.0)
    except (KubeError, aiohttp.ClientError, OSError, TimeoutError) as e:
        log.debug("InferenceModel check: %s", e)
        return False
    if not any(r.get("name") == PLURAL for r in res.get("resources") or () if isinstance(r, dict)):
        return False
    log.warning(MESSAGE, GROUP_VERSION)
    return True
