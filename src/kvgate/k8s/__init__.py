"""Kubernetes: InferencePool discovery (list + watch with a generic reflector), leader election on a
Lease, and an API-server double for tests that speaks the real wire protocol."""
