"""Commands for developers of MaculaOS, run in a checkout: `maculaos dev up|down|join-token|tour|vm|manifests` (the
local environment), `maculaos image show|build|iso` (the OS image) and `maculaos config docs` (the config.yaml
key reference)."""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maculaos.cli import options
from maculaos.cli.options import REPO_ROOT

if TYPE_CHECKING:
    from maculaos.image.definition import ImageDefinition


def _duration(text: str) -> str:
    """A duration as the CRDs take it (10s, 1m30s), checked before anything starts."""
    from maculaos.api.common import DURATION_PATTERN

    if not re.fullmatch(DURATION_PATTERN, text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 10s or 1m30s")
    return text


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds between 0 and 3600")
    return value


#: The demo's fleet size: the Restore example restores macula-nuc-02, so at least two nodes; each node runs
#: its own RAUC, D-Bus and agent, so a handful on a laptop.
DEMO_NODES = (2, 9)


def _node_count(text: str) -> int:
    low, high = DEMO_NODES
    if not text.isdigit() or not low <= int(text) <= high:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of nodes from {low} to {high}")
    return int(text)


def _dev_up(args: argparse.Namespace) -> int:
    from maculaos.devenv.demo import Demo

    Demo(args.workdir, REPO_ROOT, health_check_wait=args.upgrade_check_wait,
         delay_between_nodes=args.upgrade_delay, resync_seconds=args.resync_seconds).up(node_count=args.nodes)
    return 0


def _dev_down(args: argparse.Namespace) -> int:
    from maculaos.devenv.demo import Demo

    Demo(args.workdir, REPO_ROOT).down(keep=args.keep)
    return 0


def _dev_join_token(args: argparse.Namespace) -> int:
    from maculaos.devenv.demo import Demo

    plane = Demo(args.workdir, REPO_ROOT).control_plane()
    print(plane.join_data(args.description, dt.timedelta(hours=args.ttl_hours)).config_yaml(), end="")
    return 0


def _dev_tour(args: argparse.Namespace) -> int:
    from maculaos.devenv.demo import Demo
    from maculaos.devenv.tour import STEPS, run_tour

    if args.list:
        for step in STEPS:
            print(f"{step.name:16} {step.title}")
        return 0
    pause = (lambda: input("\n(press Enter for the next step) ")) if args.pause else None
    run_tour(Demo(args.workdir, REPO_ROOT), sys.stdout, args.step, pause)
    return 0


def _dev_vm(args: argparse.Namespace) -> int:
    """Boot a built image as a node of the running demo, on this terminal (its serial console)."""
    import subprocess

    from maculaos.devenv.demo import Demo
    from maculaos.devenv.processes import free_port
    from maculaos.image.vm import accelerator, qemu_command
    from maculaos.image.vmnode import dev_node, find_disk_image

    image = find_disk_image(args.build)
    plane = Demo(args.workdir, REPO_ROOT).control_plane()
    folder = args.workdir / "vm" / args.name
    folder.mkdir(parents=True, exist_ok=True)
    disk = folder / "disk.img"

    def config() -> dict[str, Any]:
        keys = [k.read_text().strip() for k in sorted((Path.home() / ".ssh").glob("id_*.pub"))]
        return {"maculaos": {"kubernetes": plane.join_data(f"maculaos dev vm {args.name}").config_section()},
                "ssh_authorized_keys": keys}

    ssh, metrics = args.ssh_port or free_port(), args.metrics_port or free_port()
    spec = dev_node(image, disk, config, forwards=((ssh, 22), (metrics, 9750)), memory_mib=args.memory)
    print(f"maculaos dev vm: {image.name} joining {plane.node_server}; its disk {disk}\n"
          f"  ssh -p {ssh} macula@127.0.0.1   (keys: ~/.ssh/id_*.pub)\n"
          f"  curl http://127.0.0.1:{metrics}/metrics   (the agent, once its pod runs)\n"
          f"  the serial console follows; power off from inside (sudo poweroff) or press Ctrl-A X", flush=True)
    return subprocess.run(qemu_command(spec, accelerator(spec)), check=False).returncode


def _dev_manifests(args: argparse.Namespace) -> int:
    from maculaos.devenv.controlplane import default_bin_dir
    from maculaos.devenv.manifests import render_manifests, stale_manifests

    out: Path = args.output
    files = render_manifests(default_bin_dir() / "helm", REPO_ROOT)
    if args.check:
        stale = stale_manifests(out, files)
        if stale:
            print(f"{out} is out of date ({', '.join(stale)}): run `maculaos dev manifests`", file=sys.stderr)
        return 1 if stale else 0
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
        print(out / name)
    return 0


def _image_definition(args: argparse.Namespace) -> ImageDefinition:
    from maculaos.image.definition import load_definition

    definition = load_definition(args.definition, args.extend)
    if getattr(args, "arch", None):
        definition = definition.for_arch(args.arch)
    return definition.select(args.profiles.split(",")) if args.profiles else definition


def _image_show(args: argparse.Namespace) -> int:
    print(_image_definition(args).model_dump_json(by_alias=True, indent=2))
    return 0


def _image_build(args: argparse.Namespace) -> int:
    from maculaos.image.build import BuildInputs, ImageBuilder, default_cache, summary
    from maculaos.image.signing import SigningError, development_identity, given_identity

    if bool(args.signing_key) != bool(args.signing_cert):
        raise SigningError("--signing-key and --signing-cert go together")
    signing = (given_identity(args.signing_key, args.signing_cert, args.keyring) if args.signing_key
               else development_identity(args.cache or default_cache()))
    inputs = BuildInputs(_image_definition(args), REPO_ROOT, signing, args.k3s_binary, args.operator_image,
                         args.node_binaries)
    print(summary(ImageBuilder(inputs, args.out, args.cache).build()))
    return 0


def _image_iso(args: argparse.Namespace) -> int:
    """A custom ISO from a finished build's files (e.g. one that installs unattended with a config)."""
    from maculaos.image.build import source_date_epoch
    from maculaos.image.install import check_config
    from maculaos.image.iso import build_iso, inputs_for

    if args.install_config:
        check_config(args.install_config)
    inputs = inputs_for(_image_definition(args), args.build, source_date_epoch(REPO_ROOT),
                        args.default or ("install" if args.install_config else "live"), args.cmdline_extra,
                        args.install_config)
    print(build_iso(inputs, args.out))
    return 0


def _config_docs(args: argparse.Namespace) -> int:
    from maculaos.host.configdocs import sync_reference

    if sync_reference(args.output, args.check) or not args.check:
        return 0
    print(f"{args.output} is out of date: run `maculaos config docs`", file=sys.stderr)
    return 1


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = commands.add_parser("config", help="config.yaml").add_subparsers(dest="action", required=True)
    docs = options.command(config, "docs", _config_docs,
                           "write docs/config.md, the key reference, from the NodeConfig model")
    docs.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "config.md")
    options.check(docs)

    image = commands.add_parser("image", help="the MaculaOS OS image (image-build/)").add_subparsers(
        dest="action", required=True)
    show = options.command(image, "show", _image_show, "print the definition merged with its extensions",
                           failure="maculaos image")
    options.image_definition(show)

    build = options.command(image, "build", _image_build, "build squashfs, kernel and initrd into --out",
                            failure="maculaos image build failed")
    options.image_definition(build)
    build.add_argument("--out", type=Path, default=REPO_ROOT / "dist")
    build.add_argument("--cache", type=Path, default=None, help="download cache (default ~/.cache/maculaos/image)")
    build.add_argument("--k3s-binary", type=Path, default=None,
                       help="a k3s binary to include; without it the image says plainly that k3s is missing")
    build.add_argument("--node-binaries", type=Path, default=None, metavar="DIR",
                       help="where the kubelet and kube-proxy are, for the node-runtime profile (default: .tools/bin, "
                            "built by tools/install.sh)")
    build.add_argument("--signing-key", type=Path, default=None, help="PEM key that signs the RAUC bundle and "
                       "SHA256SUMS; without it a throwaway development CA from the build cache signs (and says so)")
    build.add_argument("--signing-cert", type=Path, default=None, help="PEM certificate of --signing-key")
    build.add_argument("--keyring", type=Path, default=None,
                       help="PEM CA certificate(s) the image trusts for bundles (default: --signing-cert)")
    build.add_argument("--operator-image", type=Path, default=None, metavar="ARCHIVE",
                       help="the operator's OCI archive to pre-load (default: built from this checkout by "
                            "image-build/operator-image/build.py, cached by its inputs)")

    iso = options.command(image, "iso", _image_iso, "a custom live/installer ISO from a finished build (--build)",
                          failure="maculaos image iso failed")
    options.image_definition(iso, arch=False)
    iso.add_argument("--build", type=Path, default=REPO_ROOT / "dist", help="the build's output folder")
    iso.add_argument("--out", type=Path, required=True, help="the ISO to write")
    iso.add_argument("--install-config", type=Path, default=None, metavar="CONFIG_YAML",
                     help="put this config.yaml on the ISO and make `install` the default entry: the ISO "
                          "installs unattended onto the machine's only disk, then powers off")
    iso.add_argument("--default", choices=["live", "install", "recovery"], default=None)
    iso.add_argument("--cmdline-extra", default="", help="appended to every entry's kernel command line "
                     "(e.g. macula.install.target=/dev/sda, console=ttyS0 for a serial console)")

    dev = commands.add_parser("dev", help="the local demo environment").add_subparsers(dest="action", required=True)
    up = options.command(dev, "up", _dev_up,
                         "start a control plane, simulated nodes, the operator, and apply examples/",
                         failure="maculaos dev up failed")
    options.workdir(up)
    up.add_argument("--nodes", type=_node_count, default=3,
                    help=f"how many simulated nodes ({DEMO_NODES[0]} to {DEMO_NODES[1]})")
    up.add_argument("--upgrade-check-wait", type=_duration, default="10s",
                    help="the demo NodeUpgrade's healthCheckWait: how long each node stays healthy before the next")
    up.add_argument("--upgrade-delay", type=_duration, default="5s",
                    help="the demo NodeUpgrade's delayBetweenNodes")
    up.add_argument("--resync-seconds", type=_positive, default=10.0,
                    help="the operator's resync interval (timers such as healthCheckWait are checked on it)")
    down = options.command(dev, "down", _dev_down, "stop everything `dev up` started")
    options.workdir(down)
    down.add_argument("--keep", action="store_true", help="keep the work directory (logs, node sandboxes)")
    join = options.command(dev, "join-token", _dev_join_token,
                           "print the config.yaml section (maculaos.kubernetes) that joins a MaculaOS VM to the "
                           "running demo's control plane: its address as a QEMU guest on user networking sees "
                           "it (10.0.2.2), its CA, and a new bootstrap token",
                           failure="maculaos dev join-token failed")
    join.description = (
        "Print the maculaos.kubernetes section of a node's config.yaml that joins a MaculaOS VM to the running "
        "demo's control plane (`maculaos dev up`): the API server as a QEMU guest on user networking reaches "
        "it (https://10.0.2.2:<port>, the host's loopback), the CA that signed its certificate, and a new "
        "bootstrap token. Merge it into the config.yaml you provision the VM with; its kubelet trades the "
        "token for a client certificate of its own.")
    options.workdir(join)
    join.add_argument("--description", default="maculaos dev join-token",
                      help="kept in the token's Secret (kube-system/bootstrap-token-<id>)")
    join.add_argument("--ttl-hours", type=float, default=24.0, help="how long the token may join nodes")
    tour = options.command(dev, "tour", _dev_tour,
                           "walk through the stories on the running demo (`maculaos dev up`): each step acts on "
                           "it with kubectl and shows what to look for", failure="maculaos dev tour failed")
    options.workdir(tour)
    tour.add_argument("--step", default=None, help="play only this step (see --list)")
    tour.add_argument("--list", action="store_true", help="list the steps and stop")
    tour.add_argument("--pause", action="store_true", help="wait for Enter between steps")
    vm = options.command(dev, "vm", _dev_vm, "boot a built MaculaOS image as a VM node joined to the running "
                         "demo, with SSH and the agent's metrics forwarded", failure="maculaos dev vm failed")
    vm.description = (
        "Boot a MaculaOS image build (one with the node-runtime profile: `maculaos image build --profiles "
        "boot,base,tools,node-runtime`) in QEMU as a node of the running demo (`maculaos dev up`), from its "
        "disk image through GRUB, as a machine boots (so it can be upgraded: slots A and B). Its disk, kept "
        "in the work directory, gets a config.yaml that joins the demo's control plane and holds your "
        "~/.ssh/id_*.pub keys. Install the charts with helm to run the operator and the agent on "
        "it. The serial console is this terminal. Like the VM tests' machines it has a hardware watchdog "
        "(QEMU's i6300esb, /dev/watchdog0; the q35 chipset's own is left out), unarmed until its "
        "config.yaml's maculaos.watchdog arms it at the next boot.")
    options.workdir(vm)
    vm.add_argument("--build", type=Path, default=REPO_ROOT / "dist", help="the build folder (default: dist/)")
    vm.add_argument("--name", default="vm1", help="the VM's folder in the work directory (its disk)")
    vm.add_argument("--memory", type=int, default=1536, help="MiB of RAM (default 1536)")
    vm.add_argument("--ssh-port", type=int, default=0, help="host port forwarded to its SSH (default: a free one)")
    vm.add_argument("--metrics-port", type=int, default=0,
                    help="host port forwarded to the agent's metrics port 9750 (default: a free one)")
    manifests = options.command(dev, "manifests", _dev_manifests,
                                "render deploy/kustomize/ from the charts and the API models")
    manifests.add_argument("--output", type=Path, default=REPO_ROOT / "deploy" / "kustomize")
    options.check(manifests)
