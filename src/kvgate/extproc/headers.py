"""Reading Envoy ``HeaderMap``s and building header mutations and dynamic metadata."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from kvgate.extproc import keys


def header_dict(headers: base_pb2.HeaderMap) -> dict[str, str]:
    """Lower-cased names -> values. Envoy fills ``raw_value`` (bytes) in recent versions, ``value`` before."""
    out: dict[str, str] = {}
    for h in headers.headers:
        value = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
        name = h.key.lower()
        # Repeated headers fold into one comma-separated value, as HTTP allows.
        out[name] = f"{out[name]},{value}" if name in out else value
    return out


def set_header(key: str, value: str) -> base_pb2.HeaderValueOption:
    # Envoy rejects mutations that set both value and raw_value; raw_value is what current Envoy reads.
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def header_mutation(
    sets: Mapping[str, str], removes: Iterable[str] = (), append: tuple[str, str] | None = None
) -> pb.HeaderMutation:
    """``append``: one header added beside any of its name (a ``set-cookie`` beside the server's)."""
    out = [set_header(k, v) for k, v in sets.items()]
    if append is not None:
        out.append(
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=append[0], raw_value=append[1].encode()),
                append_action=base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD,
            )
        )
    return pb.HeaderMutation(set_headers=out, remove_headers=list(removes))


def destination_metadata(value: str) -> struct_pb2.Struct:
    """``{"envoy.lb": {"x-gateway-destination-endpoint": value}}``, the same value as the header."""
    md = struct_pb2.Struct()
    md.update({keys.LB_NAMESPACE: {keys.DESTINATION_ENDPOINT: value}})
    return md


def _struct_field(metadata: base_pb2.Metadata, namespace: str, key: str) -> struct_pb2.Value | None:
    if namespace not in metadata.filter_metadata:
        return None
    fields = metadata.filter_metadata[namespace].fields
    return fields.get(key)


def subset_hint(metadata: base_pb2.Metadata) -> frozenset[str] | None:
    """The gateway's subset hint: None when absent, else the (possibly empty) set of ``ip:port``."""
    value = _struct_field(metadata, keys.SUBSET_HINT_NAMESPACE, keys.SUBSET_HINT_KEY)
    if value is None:
        return None
    kind = value.WhichOneof("kind")
    if kind == "list_value":
        return frozenset(v.string_value for v in value.list_value.values if v.string_value)
    if kind == "string_value":  # tolerated: a comma-separated string
        return frozenset(s.strip() for s in value.string_value.split(",") if s.strip())
    return frozenset()


def served_endpoint(metadata: base_pb2.Metadata) -> str | None:
    value = _struct_field(metadata, keys.LB_NAMESPACE, keys.SERVED_ENDPOINT_KEY)
    if value is None or value.WhichOneof("kind") != "string_value" or not value.string_value:
        return None
    return value.string_value
