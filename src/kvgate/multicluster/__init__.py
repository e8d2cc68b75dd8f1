"""Multi-cluster inference routing: clusters are the candidates, picked by their pools' aggregates.

``clusters`` (the static clusters file, hot reload), ``fetcher`` (aggregates with a TTL, EPP gRPC health),
``policies`` (round-robin, active-passive, llm-d-hub, kvgate), ``router`` (Endpoint mode through a cluster's
EPP with Parent-mode fallback, failover across clusters for requests not yet started), ``serve`` (the global
``kvgate serve --clusters``), ``hub`` (the hub EPP, ``kvgate epp --clusters``, Parent mode), ``export``
(the per-cluster side: a front door's ``/v1/pool/aggregate`` source).
"""
