"""The operator image's archive writer (image-build/operator-image/oci.py) on a small root, without the
minutes of a real image build: one zstd layer that decompresses to the config's diff_id, digests and sizes
that match the blobs, and the same bytes twice (tests/image/test_operator_image.py builds the real one)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "image-build" / "operator-image"))

import oci  # noqa: E402  (a sibling module of the builder, not a package)

EPOCH = 1_795_000_000


def _root(tmp: Path) -> Path:
    root = tmp / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(b"#!/bin/sh\necho hi\n" * 500)
    (root / "usr/bin/tool").chmod(0o755)
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "bin").symlink_to("usr/bin")
    (root / "proc").mkdir()
    (root / "proc/never").write_text("runtime only")
    return root


def _config() -> oci.ImageConfig:
    return oci.ImageConfig(name="example.org/op", tag="1.2.3", architecture="amd64", created_epoch=EPOCH,
                           user="65532:65532", entrypoint=["/usr/bin/tool"], cmd=[], env=[])


def _read(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _json(files: dict[str, bytes], digest: str) -> Any:
    return json.loads(files["blobs/sha256/" + digest.removeprefix("sha256:")])


def test_the_layer_is_zstd_and_unpacks_to_the_configs_diff_id(tmp_path: Path) -> None:
    oci.write_archive(_root(tmp_path), _config(), tmp_path / "a.tar")
    files = _read(tmp_path / "a.tar")
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1], f"{name} is not its digest"
    index = json.loads(files["index.json"])
    manifest = _json(files, index["manifests"][0]["digest"])
    config = _json(files, manifest["config"]["digest"])
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    compressed = files["blobs/sha256/" + layer["digest"].removeprefix("sha256:")]
    assert layer["size"] == len(compressed) and compressed.startswith(b"\x28\xb5\x2f\xfd")  # a zstd frame
    plain = subprocess.run(["zstd", "-d", "-q", "-c"], input=compressed, capture_output=True, check=True).stdout
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(plain).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        names = tar.getnames()
    assert names == ["bin", "etc", "etc/passwd", "proc", "usr", "usr/bin", "usr/bin/tool"]  # not proc/never
    assert len(compressed) < len(plain) / 5
    docker = json.loads(files["manifest.json"])
    assert docker[0]["Layers"] == ["blobs/sha256/" + layer["digest"].removeprefix("sha256:")]
    assert docker[0]["RepoTags"] == ["example.org/op:1.2.3"]


def test_two_archives_of_one_root_are_the_same_bytes(tmp_path: Path) -> None:
    root = _root(tmp_path)
    oci.write_archive(root, _config(), tmp_path / "a.tar")
    (root / "etc/passwd").touch()  # a later file time is clamped to the epoch
    oci.write_archive(root, _config(), tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
