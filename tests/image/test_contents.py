"""What is inside the built image, read from its squashfs without booting it (unsquashfs): the pre-loaded
operator, its charts and the k3s config agree with each other (k3s itself is not available here: what
k3s would do with them is not run); and nothing that identifies one node or one build run is in it (the
pieces that commonly break a reproducible build). The boot tests check the same files from the console."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import re
import shlex
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from maculaos.host.firewall import DEFAULT_RULESET_PATH, render_default_ruleset
from maculaos.image import airgap
from tests.image.conftest import REPO, BuiltImage

pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

HELM = REPO / ".tools" / "bin" / "helm"
KUBE_VERSION = "1.31.0"


@pytest.fixture(scope="module")
def root(built_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The few folders these tests read, unpacked from the squashfs."""
    out = tmp_path_factory.mktemp("contents") / "root"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(out), str(built_image.squashfs), "usr/share/maculaos",
                    "etc/rancher", "etc/maculaos", "etc/machine-id", "usr/lib/os-release"],
                   check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def listing(built_image: BuiltImage) -> list[tuple[str, int, datetime.datetime, str]]:
    """(mode, size, mtime to the minute, path) of every entry in the squashfs."""
    out = subprocess.run(["unsquashfs", "-lln", str(built_image.squashfs)], capture_output=True, text=True,
                         check=True, env={"TZ": "UTC", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}).stdout
    entries = []
    pattern = re.compile(r"^(\S+) \S+ +(\d+|\d+,\s*\d+) (\d{4}-\d\d-\d\d \d\d:\d\d) squashfs-root(/.*?)(?: -> .*)?$")
    for line in out.splitlines():
        m = pattern.match(line)
        if m:
            size = int(m.group(2)) if "," not in m.group(2) else 0
            when = datetime.datetime.strptime(m.group(3), "%Y-%m-%d %H:%M").replace(tzinfo=datetime.UTC)
            entries.append((m.group(1), size, when, m.group(4)))
    assert len(entries) > 10000, out[:500]
    return entries


def build_info(image: BuiltImage) -> dict[str, str]:
    return {k: shlex.split(v)[0] if v else "" for k, _, v in (line.partition("=") for line in
                                                             image.build_info.splitlines())}


def render(chart: Path, values: str | None = None) -> list[dict[str, Any]]:
    args = [str(HELM), "template", "maculaos", str(chart), f"--namespace={airgap.NAMESPACE}",
            f"--kube-version={KUBE_VERSION}"]
    if values is not None:
        values_file = chart.with_suffix(".values.yaml")
        values_file.write_text(values)
        args.append(f"--values={values_file}")
    out = subprocess.run(args, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_the_preloaded_operator_matches_its_charts_and_the_k3s_config(
        root: Path, built_image: BuiltImage, tmp_path: Path) -> None:
    share = root / airgap.SHARE
    archives = sorted((share / "images").iterdir())
    assert [a.name for a in archives] == ["maculaos-operator-0.1.0-amd64.tar"]
    reference = airgap.archive_reference(archives[0])
    with tarfile.open(archives[0]) as tar:   # the name containerd imports it under (OCI index annotation)
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == reference
    info = build_info(built_image)
    line = [ln for ln in built_image.build_info.splitlines() if ln.startswith("OPERATOR_IMAGE=")][0]
    assert reference in line and hashlib.sha256(archives[0].read_bytes()).hexdigest() in line, line
    assert info["K3S"].startswith("not included (")          # said plainly: never faked

    docs = list(yaml.safe_load_all((share / "manifests" / airgap.MANIFEST_NAME).read_text()))
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("HelmChart", "maculaos-crds"), ("HelmChart", "maculaos-operator")]
    charts = {}
    for doc in docs:
        assert doc["metadata"]["namespace"] == "kube-system" and doc["spec"]["targetNamespace"] == airgap.NAMESPACE
        chart = tmp_path / f"{doc['metadata']['name']}.tgz"
        chart.write_bytes(base64.b64decode(doc["spec"]["chartContent"]))
        charts[doc["metadata"]["name"]] = chart

    crds = render(charts["maculaos-crds"])
    repo_crds = {yaml.safe_load(p.read_text())["metadata"]["name"] for p in (REPO / "crds").glob("*.yaml")}
    assert {d["metadata"]["name"] for d in crds if d["kind"] == "CustomResourceDefinition"} == repo_crds

    rendered = render(charts["maculaos-operator"], docs[1]["spec"]["valuesContent"])
    workloads = {d["kind"]: d for d in rendered if d["kind"] in ("Deployment", "DaemonSet")}
    assert set(workloads) == {"Deployment", "DaemonSet"}
    for kind, workload in workloads.items():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            assert container["image"] == reference, kind        # exactly the archive's name:tag
            assert container["imagePullPolicy"] == "Never", kind  # never pulled: the node may be offline
    # The agent DaemonSet runs on the nodes k3s labels from the image's config.yaml.
    k3s = yaml.safe_load((root / airgap.K3S_CONFIG).read_text())
    labels = dict(label.split("=", 1) for label in k3s["node-label"])
    selector = workloads["DaemonSet"]["spec"]["template"]["spec"]["nodeSelector"]
    assert selector and all(labels.get(k) == v for k, v in selector.items()), (selector, labels)
    assert labels[airgap.VERSION_LABEL] == info["MACULAOS_VERSION"]


def test_os_release_names_the_maculaos_build(root: Path, built_image: BuiltImage) -> None:
    """The node's version (the agent's label) and the Node's OS image (the kubelet's) come from here."""
    fields = dict(shlex.split(line)[0].split("=", 1) for line in (root / "usr/lib/os-release").read_text().splitlines())
    assert fields["VERSION_ID"] == build_info(built_image)["MACULAOS_VERSION"], fields
    assert (fields["ID"], fields["ID_LIKE"], fields["NAME"]) == ("maculaos", "debian", "MaculaOS"), fields


def test_the_default_firewall_is_the_one_port_list(built_image: BuiltImage) -> None:
    """maculaos-firewall.service's fallback for a node without config.yaml (issue #21)."""
    shipped = subprocess.run(["unsquashfs", "-cat", str(built_image.squashfs), str(DEFAULT_RULESET_PATH)],
                             capture_output=True, text=True, check=True).stdout
    assert shipped == render_default_ruleset()


def test_nothing_that_identifies_one_node_is_in_the_image(
        root: Path, listing: list[tuple[str, int, datetime.datetime, str]]) -> None:
    paths = {p for _, _, _, p in listing}
    host_keys = sorted(p for p in paths if re.match(r"/etc/ssh/ssh_host_.*_key", p))
    assert not host_keys, f"SSH host keys shipped to every node: {host_keys}"
    assert (root / "etc/machine-id").read_bytes() == b"", "a machine id shared by every node"
    assert "/var/lib/dbus/machine-id" not in paths


def test_nothing_from_the_build_run_is_in_the_image(
        built_image: BuiltImage, listing: list[tuple[str, int, datetime.datetime, str]]) -> None:
    """The usual breakers of a reproducible image: apt lists and caches, logs, times of the build run."""
    assert not [p for _, _, _, p in listing if p.startswith("/var/lib/apt/lists/") and "Packages" in p]
    assert not [p for _, _, _, p in listing if p.endswith(".deb")]
    assert not [p for m, s, _, p in listing if p.startswith("/var/log/") and m.startswith("-") and s > 0]
    epoch = int(build_info(built_image)["BUILD_EPOCH"])
    limit = datetime.datetime.fromtimestamp(epoch - epoch % 60, datetime.UTC)
    newer = [p for _, _, when, p in listing if when > limit and not p.endswith(".py")]
    assert not newer, f"{len(newer)} entries newer than SOURCE_DATE_EPOCH, e.g. {newer[:5]}"
    pyc = [p for _, _, _, p in listing if "/dist-packages/maculaos/cli/__pycache__/__init__.cpython-313" in p]
    assert pyc, "the maculaos package is not compiled for the image's Python"


def test_every_kernel_module_kept_has_what_it_depends_on(
        built_image: BuiltImage, listing: list[tuple[str, int, datetime.datetime, str]],
        tmp_path: Path) -> None:
    """The build leaves out modules of hardware an edge node lacks (build.DPKG_OPTIONS); none left in may
    need one left out (i915 needs rc-core, a media module), and the ones a NUC needs are there."""
    paths = {p for _, _, _, p in listing}
    deps_files = [p for p in paths if re.fullmatch(r"/usr/lib/modules/[^/]+/modules\.dep", p)]
    assert len(deps_files) == 1, deps_files
    modules = deps_files[0].removesuffix("/modules.dep")
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(tmp_path / "r"), str(built_image.squashfs),
                    deps_files[0].lstrip("/")], check=True, capture_output=True)
    missing = []
    for line in (tmp_path / "r" / deps_files[0].lstrip("/")).read_text().splitlines():
        module, _, deps = line.partition(":")
        missing += [f"{module} needs {d}" for d in deps.split() if f"{modules}/{d}" not in paths]
    assert not missing, missing[:10]
    kept = {p.removeprefix(modules + "/kernel/") for p in paths if p.startswith(modules + "/kernel/")}
    for needed in ("drivers/gpu/drm/i915/i915.ko.xz", "drivers/media/rc/rc-core.ko.xz",
                   "drivers/net/wireless/intel/iwlwifi/iwlwifi.ko.xz", "drivers/net/ethernet/realtek/r8169.ko.xz",
                   "drivers/media/usb/uvc/uvcvideo.ko.xz", "sound/core/snd.ko.xz"):
        assert needed in kept, needed
    assert not [p for p in kept if p.startswith(("sound/soc/", "drivers/infiniband/", "drivers/staging/"))]
    assert not [p for p in paths if p.startswith("/usr/share/vim/") and "/doc/" in p]
    assert [p for p in paths if p.startswith("/usr/share/vim/") and p.endswith("/syntax/yaml.vim")]


def test_the_node_runtime_carries_only_what_its_pods_use(listing: list[tuple[str, int, datetime.datetime, str]],
                                                         root: Path) -> None:
    """The node-runtime profile (in the tests' image): the kubelet with kube-proxy as a link to it (one
    binary), the four CNI plugins the pod network uses, containerd without its v1 shims, and the pause
    image named as containerd's config names it."""
    paths = {path: mode for mode, _, _, path in listing}
    assert paths["/usr/local/bin/kubelet"].startswith("-rwx"), paths["/usr/local/bin/kubelet"]
    assert paths["/usr/local/bin/kube-proxy"].startswith("l"), paths["/usr/local/bin/kube-proxy"]
    assert sorted(p.rsplit("/", 1)[1] for p in paths if p.startswith("/usr/lib/cni/")) == \
        ["bridge", "host-local", "loopback", "portmap"]
    assert "/usr/bin/containerd-shim-runc-v2" in paths and "/usr/bin/ctr" in paths
    assert "/usr/bin/containerd-shim" not in paths and "/usr/bin/containerd-shim-runc-v1" not in paths
    pause = root / "usr/share/maculaos/node-runtime/images/pause.tar"
    assert airgap.archive_reference(pause) == "maculaos.local/pause:3.10"
    assert airgap.archive_architecture(pause) == "amd64"
