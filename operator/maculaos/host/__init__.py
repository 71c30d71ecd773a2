"""One module per host concern, each a small typed API over a real tool, rooted at a host root that is
a parameter (/host in the agent's pod, a sandbox folder in tests), never a hard-coded /."""
