"""Building the MaculaOS image (Debian 13 via mmdebstrap) and booting it in QEMU: build-machine tools."""
