"""The local environment: a real control plane as processes, simulated nodes, the demo."""
