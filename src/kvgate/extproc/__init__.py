"""The Envoy ext_proc Endpoint Picker (`kvgate epp`): a drop-in for the Gateway API Inference Extension EPP.

``session`` holds the per-request protocol state machine (pure, no sockets), ``server`` wraps it in a
``grpc.aio`` ExternalProcessor service with gRPC health and Prometheus metrics, and ``testing`` plays
Envoy's side of the stream so the whole exchange can be exercised without Envoy.
"""
