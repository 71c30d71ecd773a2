"""Talking to the Kubernetes API without the generated client (its RSS: docs/benchmarks.md), for the agent
and the operator alike: `rest` (credentials, a small JSON client whose requests are counted, REST paths,
merge patches, Events) and `leader` (Lease-based leader election). It imports nothing else of ours."""
