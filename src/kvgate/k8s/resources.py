"""The Kubernetes resource types kvgate reads and writes: group, version, kind, plural, scope.

One table shared by the API-server double (what it serves), the reflector (which paths to list and
watch) and the CRD schemas the Helm chart's manifests are validated against.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ResourceType:
    group: str  # "" = the core group
    version: str
    kind: str
    plural: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    # Subresources this type serves ("status" = writes to the main resource leave .status alone).
    subresources: tuple[str, ...] = ("status",)
    categories: tuple[str, ...] = field(default=())

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def api_version(self) -> str:
        return self.group_version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    def collection_path(self, namespace: str | None = None) -> str:
        """``/api/v1/namespaces/ns/pods`` or ``/apis/g/v/plural`` (all when ``namespace`` is None)."""
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            return f"{root}/namespaces/{namespace}/{self.plural}"
        return f"{root}/{self.plural}"

    def item_path(self, namespace: str | None, name: str) -> str:
        return f"{self.collection_path(namespace)}/{name}"


POD = ResourceType("", "v1", "Pod", "pods", short_names=("po",))
NAMESPACE = ResourceType("", "v1", "Namespace", "namespaces", namespaced=False, short_names=("ns",))
SERVICE = ResourceType("", "v1", "Service", "services", short_names=("svc",))
CONFIGMAP = ResourceType("", "v1", "ConfigMap", "configmaps", short_names=("cm",), subresources=())
LEASE = ResourceType("coordination.k8s.io", "v1", "Lease", "leases", subresources=())
CRD = ResourceType(
    "apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions",
    namespaced=False, short_names=("crd", "crds"),
)  # fmt: skip

INFERENCE_POOL = ResourceType(
    "inference.networking.k8s.io", "v1", "InferencePool", "inferencepools", short_names=("infpool",)
)
# InferenceObjective / InferenceModelRewrite: the current group (llm-d) and the legacy x-k8s.io one.
OBJECTIVE_GROUP = "llm-d.ai"
LEGACY_GROUP = "inference.networking.x-k8s.io"
INFERENCE_OBJECTIVE = ResourceType(OBJECTIVE_GROUP, "v1alpha2", "InferenceObjective", "inferenceobjectives")
INFERENCE_MODEL_REWRITE = ResourceType(
    OBJECTIVE_GROUP, "v1alpha2", "InferenceModelRewrite", "inferencemodelrewrites"
)
LEGACY_INFERENCE_OBJECTIVE = ResourceType(
    LEGACY_GROUP, "v1alpha2", "InferenceObjective", "inferenceobjectives"
)
LEGACY_INFERENCE_MODEL_REWRITE = ResourceType(
    LEGACY_GROUP, "v1alpha2", "InferenceModelRewrite", "inferencemodelrewrites"
)
# An objective's / rewrite's unset ``poolRef.group``: what the API server stores with upstream's CRD of the
# object's own group (llm-d-router apix/v1alpha2 ``PoolObjectReference.Group`` default "llm-d.ai"; GIE's
# x-k8s CRDs default it to the v1 group; review rev-b33 F1).
POOL_REF_GROUP_DEFAULT = {OBJECTIVE_GROUP: OBJECTIVE_GROUP, LEGACY_GROUP: "inference.networking.k8s.io"}
# The InferencePool before v1 (GIE v0.x, llm-d v0.3's charts: the reference EPP's ``--pool-group
# inference.networking.x-k8s.io``): ``spec.selector`` a plain map, one ``spec.targetPortNumber``,
# ``spec.extensionRef``.
LEGACY_INFERENCE_POOL = ResourceType(LEGACY_GROUP, "v1alpha2", "InferencePool", "inferencepools")
# ``--pool-group`` -> the InferencePool type watched (the reference EPP's flag; its default first).
POOL_GROUPS = {INFERENCE_POOL.group: INFERENCE_POOL, LEGACY_GROUP: LEGACY_INFERENCE_POOL}
# Multi-cluster (GIE proposal 1374): status-only, controller-managed.
INFERENCE_POOL_IMPORT = ResourceType(LEGACY_GROUP, "v1alpha1", "InferencePoolImport", "inferencepoolimports")

BUILTIN = (POD, NAMESPACE, SERVICE, CONFIGMAP, LEASE, CRD)
INFERENCE = (
    INFERENCE_POOL,
    INFERENCE_OBJECTIVE,
    INFERENCE_MODEL_REWRITE,
    LEGACY_INFERENCE_OBJECTIVE,
    LEGACY_INFERENCE_MODEL_REWRITE,
    LEGACY_INFERENCE_POOL,
    INFERENCE_POOL_IMPORT,
)
ALL = BUILTIN + INFERENCE
