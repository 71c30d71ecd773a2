"""The kernel and initramfs leave the root before it is packed: they are build outputs of their own, which
the disk image, the ISO and the update bundle carry beside the squashfs."""

from __future__ import annotations

from pathlib import Path

from maculaos.image.build import drop_boot_files

VERSION = "6.12.118+deb13-amd64"


def test_kernel_initramfs_and_the_links_to_them_leave_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    boot = root / "boot"
    boot.mkdir(parents=True)
    kernel, initrd = boot / f"vmlinuz-{VERSION}", boot / f"initrd.img-{VERSION}"
    for path in (kernel, initrd, boot / f"config-{VERSION}", boot / f"System.map-{VERSION}"):
        path.write_text(path.name)
    (boot / "efi").mkdir()
    (root / "vmlinuz").symlink_to(f"boot/vmlinuz-{VERSION}")                # Debian's links, relative
    (root / "initrd.img").symlink_to(f"boot/initrd.img-{VERSION}")
    (root / "initrd.img.old").symlink_to(f"/boot/initrd.img-{VERSION}")      # and absolute
    (boot / "vmlinuz").symlink_to(f"vmlinuz-{VERSION}")
    (root / "vmlinuz-notes").mkdir()                                          # not a link: not ours to remove

    drop_boot_files(root, kernel, initrd)

    assert sorted(p.name for p in boot.iterdir()) == [f"System.map-{VERSION}", f"config-{VERSION}", "efi"]
    assert sorted(p.name for p in root.iterdir()) == ["boot", "vmlinuz-notes"]
