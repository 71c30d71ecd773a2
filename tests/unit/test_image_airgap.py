"""The image's airgap pieces without building an image: the charts packed reproducibly, the HelmChart
manifest rendering the operator from the pre-loaded image only, and the boot-time copy into k3s's
folders (image-build/overlay/usr/lib/maculaos/k3s-preload, run on a folder)."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from maculaos.image import airgap

REPO = Path(__file__).resolve().parents[2]
PRELOAD = REPO / "image-build" / "overlay" / "usr" / "lib" / "maculaos" / "k3s-preload"
REFERENCE = "ghcr.io/macula-io/maculaos-operator:0.1.0"


def _archive(path: Path, tags: list[str]) -> Path:
    with tarfile.open(path, "w") as tar:
        data = json.dumps([{"RepoTags": tags}]).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_charts_are_packed_byte_for_byte_the_same_and_helm_reads_them(tmp_path: Path) -> None:
    chart = REPO / "charts" / "maculaos-operator"
    first, second = airgap.chart_tarball(chart, 1_700_000_000), airgap.chart_tarball(chart, 1_700_000_000)
    assert first == second
    assert airgap.chart_tarball(chart, 1_700_000_001) != first          # the epoch is in it, nothing else
    (tmp_path / "c.tgz").write_bytes(first)
    shown = subprocess.run([str(REPO / ".tools/bin/helm"), "show", "chart", str(tmp_path / "c.tgz")],
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout)["name"] == "maculaos-operator"
    with tarfile.open(tmp_path / "c.tgz") as tar:
        assert all(m.uid == 0 and m.mtime == 1_700_000_000 for m in tar.getmembers())


def test_the_manifest_pins_the_archive_and_never_pulls() -> None:
    charts = {name: b"chart-" + name.encode() for name in airgap.CHARTS}
    docs = list(yaml.safe_load_all(airgap.helmchart_manifest(charts, REFERENCE)))
    assert [d["metadata"]["name"] for d in docs] == ["maculaos-crds", "maculaos-operator"]
    assert base64.b64decode(docs[0]["spec"]["chartContent"]) == b"chart-maculaos-crds"
    values = yaml.safe_load(docs[1]["spec"]["valuesContent"])
    assert values["image"] == {"repository": "ghcr.io/macula-io/maculaos-operator", "tag": "0.1.0",
                               "pullPolicy": "Never"}


@pytest.mark.parametrize("tags", [[], ["a:1", "b:2"], ["no-tag"]])
def test_an_archive_without_exactly_one_name_and_tag_is_refused(tmp_path: Path, tags: list[str]) -> None:
    with pytest.raises(airgap.AirgapError, match="exactly one name:tag"):
        airgap.archive_reference(_archive(tmp_path / "a.tar", tags))


def test_a_file_that_is_not_an_image_archive_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.tar").write_text("not a tar")
    with pytest.raises(airgap.AirgapError, match="not an image archive"):
        airgap.archive_reference(tmp_path / "x.tar")


def _preload(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(PRELOAD)], env=os.environ | {"MACULAOS_HOST_ROOT": str(root)},
                          capture_output=True, text=True, timeout=30)


def test_preload_copies_the_images_files_and_replaces_another_versions_archive(tmp_path: Path) -> None:
    share = tmp_path / airgap.SHARE
    (share / "images").mkdir(parents=True)
    (share / "manifests").mkdir()
    _archive(share / "images" / "maculaos-operator-0.2.0-amd64.tar", [REFERENCE])
    (share / "manifests" / "maculaos.yaml").write_text("new manifest\n")
    images, manifests = tmp_path / airgap.K3S_IMAGES, tmp_path / airgap.K3S_MANIFESTS
    images.mkdir(parents=True)
    (images / "maculaos-operator-0.1.0-amd64.tar").write_text("the previous version")
    (images / "someone-elses.tar").write_text("left alone")
    result = _preload(tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in images.iterdir()) == ["maculaos-operator-0.2.0-amd64.tar", "someone-elses.tar"]
    assert (images / "maculaos-operator-0.2.0-amd64.tar").read_bytes() == \
        (share / "images" / "maculaos-operator-0.2.0-amd64.tar").read_bytes()
    assert (manifests / "maculaos.yaml").read_text() == "new manifest\n"
    again = _preload(tmp_path)
    assert again.returncode == 0 and again.stdout == "", again.stdout     # nothing to do the second time
    (share / "manifests" / "maculaos.yaml").write_text("updated manifest\n")  # an update of the root
    assert "maculaos.yaml" in _preload(tmp_path).stdout
    assert (manifests / "maculaos.yaml").read_text() == "updated manifest\n"
