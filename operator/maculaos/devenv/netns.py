"""Network namespaces standing in for simulated nodes' network stacks, so their agents load real
nftables rules without touching this machine's own firewall."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path


def netns_name(workdir: Path, node: str) -> str:
    digest = hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:8]
    return f"maculaos-{digest}-{node}"


def create_netns(name: str) -> None:
    existing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    if not any(line.split()[0] == name for line in existing.splitlines() if line.strip()):
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)


def delete_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def nft_wrapper(path: Path, netns: str) -> Path:
    """A script that runs nft inside the namespace: what the simulated node's agent calls as `nft`."""
    path.write_text(f'#!/bin/sh\nexec ip netns exec {netns} nft "$@"\n')
    path.chmod(0o755)
    return path
