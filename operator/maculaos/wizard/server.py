"""Serving the wizard: HTTPS with the node's self-signed certificate, port 80 only redirecting to it, both
stopped as soon as the node is paired. Nothing is served on a configured node."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from maculaos.host.firstboot import Certificate, ensure_certificate, in_first_boot_mode, setup_secret
from maculaos.host.hostname import choose
from maculaos.wizard.app import WizardState, build_app, redirect_app
from maculaos.wizard.pairing import NodeSetup

log = logging.getLogger("maculaos.wizard")


@dataclass(frozen=True)
class ServeSettings:
    host_root: Path
    portal_url: str
    bind: str = "0.0.0.0"
    tls_port: int = 443
    http_port: int = 80
    """0: no redirecting port."""
    address: str = ""
    """The address shown in the URL; empty: <name>.local."""
    openssl: str = "openssl"


def node_setup(settings: ServeSettings) -> tuple[NodeSetup, Certificate]:
    """The node's name, secret and certificate (each made once and kept)."""
    name = choose(settings.host_root).name
    certificate = ensure_certificate(settings.host_root, name, settings.openssl)
    setup = NodeSetup(settings.host_root, name, setup_secret(settings.host_root), certificate.fingerprint,
                      settings.portal_url, settings.tls_port, settings.address)
    return setup, certificate


def _config(app: Starlette, settings: ServeSettings, port: int, certificate: Certificate | None) -> uvicorn.Config:
    tls = {"ssl_certfile": str(certificate.cert), "ssl_keyfile": str(certificate.key)} if certificate else {}
    # No access log: the console's QR link carries the secret in its query string.
    return uvicorn.Config(app, host=settings.bind, port=port, access_log=False, log_level="warning",
                          lifespan="off", timeout_graceful_shutdown=3, server_header=False, **tls)  # type: ignore[arg-type]  # the TLS keywords


async def serve_until_paired(settings: ServeSettings, setup: NodeSetup, certificate: Certificate) -> None:
    """Serve until the node is paired; then both ports close."""
    paired = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_paired() -> None:
        loop.call_soon_threadsafe(paired.set)

    state = WizardState(setup, on_paired=on_paired)
    servers = [uvicorn.Server(_config(build_app(state), settings, settings.tls_port, certificate))]
    if settings.http_port:
        servers.append(uvicorn.Server(_config(redirect_app(settings.tls_port), settings, settings.http_port, None)))

    async def stop_when_paired() -> None:
        await paired.wait()
        await asyncio.sleep(0.5)  # the last page reaches the browser first
        for server in servers:
            server.should_exit = True

    stopper = asyncio.create_task(stop_when_paired())
    try:
        await asyncio.gather(*(server.serve() for server in servers))
    finally:
        stopper.cancel()


def serve(settings: ServeSettings) -> bool:
    """Serve the wizard until the node is paired; False (nothing served) outside first-boot mode."""
    if not in_first_boot_mode(settings.host_root):
        return False
    setup, certificate = node_setup(settings)
    log.info("wizard: serving %s on port %d", setup.url, settings.tls_port)
    asyncio.run(serve_until_paired(settings, setup, certificate))
    return True
