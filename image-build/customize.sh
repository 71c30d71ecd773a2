#!/bin/sh
# Runs inside the new root (chroot, /proc /sys /dev mounted by mmdebstrap) after the packages and the
# overlays are in: the steps that need the image's own tools. Arguments: the login user's name.
set -eu
user=$1

# The login user; homes live under /var (the data partition): the root file system is read-only.
mkdir -p /var/home
if [ -d /home ] && [ ! -L /home ]; then rmdir /home; fi
ln -sfn var/home /home
useradd --create-home --home-dir /home/"$user" --shell /bin/bash --groups sudo --user-group "$user"
passwd --lock "$user" >/dev/null
# It administers the node without a password: it is reached only with config.yaml's SSH keys, or at the
# console with its password_hash (the agent keeps /etc/shadow to that), as Debian's cloud images do.
if [ -d /etc/sudoers.d ]; then   # a build without the base profile has no sudo
	printf '%s ALL=(ALL:ALL) NOPASSWD: ALL\n' "$user" > /etc/sudoers.d/maculaos-login
	chmod 0440 /etc/sudoers.d/maculaos-login
	visudo -cq -f /etc/sudoers.d/maculaos-login
fi

# Units: the boot path and the DHCP network; a unit the image does not ship is skipped, not an error.
for unit in maculaos-firewall.service maculaos-apply.service macula-firstboot.service macula-ready.service systemd-networkd.service \
            systemd-resolved.service nftables.service ssh.service chrony.service avahi-daemon.service \
            maculaos-mark-good.service macula-hostname.service maculaos-install.service macula-grow-data.service \
            macula-ssh-keygen.service macula-node-info.service macula-node-info.path macula-k3s-preload.service \
            nats-server.service k3s.service kubelet.service maculaos-wizard.service \
            maculaos-factory-reset-done.service; do
	if [ -e "/usr/lib/systemd/system/$unit" ]; then systemctl enable "$unit"; fi
done
# containerd runs for the kubelet only (kubelet.service wants it): not on a node that joins no cluster.
if [ -e /usr/lib/systemd/system/containerd.service ]; then systemctl disable containerd.service; fi
# Debian's lighttpd.service serves /var/www on port 80 (the wizard's): the git server has a unit of its own.
if [ -e /usr/lib/systemd/system/lighttpd.service ]; then systemctl disable lighttpd.service; fi
# No waiting up to two minutes for a network at boot: nothing on the boot path needs one.
systemctl mask systemd-networkd-wait-online.service

# The ESP's mount point (the initramfs mounts it there on a MaculaOS disk: RAUC writes GRUB's environment).
# systemd's GPT auto-mounter would mount the ESP a second time, at /efi, which the read-only root lacks.
mkdir -p /boot/efi /etc/systemd/system-generators
ln -sfn /dev/null /etc/systemd/system-generators/systemd-gpt-auto-generator

# Nothing that identifies one node goes into an image shared by all of them: SSH host keys are made on
# first boot (macula-ssh-keygen.service), the machine id by systemd (mmdebstrap leaves it empty).
rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id

# mDNS over IPv4 only, and only IPv4 addresses in it. avahi takes its own probe, echoed back by the
# kernel, for another host's when the addresses it publishes change while it probes (avahi issue #117,
# unfixed in 0.8), and renames the node on mDNS <name>-2, -3...: at every boot an IPv6 router
# advertisement replaces the link-local address (avahi publishes IPv6 addresses over IPv4 too, unless
# told not to), and a prefix change does it again later. A node's IPv4 address changes far less often. A
# dual-stack LAN still finds the node; an IPv6-only LAN has no mDNS discovery (the mesh is not affected).
if [ -e /etc/avahi/avahi-daemon.conf ]; then
	sed -i -e 's/^#\?use-ipv6=.*/use-ipv6=no/' -e 's/^#\?publish-aaaa-on-ipv4=.*/publish-aaaa-on-ipv4=no/' \
		/etc/avahi/avahi-daemon.conf
	grep -qx 'use-ipv6=no' /etc/avahi/avahi-daemon.conf
	grep -qx 'publish-aaaa-on-ipv4=no' /etc/avahi/avahi-daemon.conf
fi

# The login banner is MaculaOS's (overlay: /etc/motd, /etc/update-motd.d/10-maculaos), not uname's.
rm -f /etc/update-motd.d/10-uname

# The read-only root has no place for these; systemd-firstboot would otherwise ask on the console.
echo maculaos > /etc/hostname          # the image's; each node gets its own at boot (macula-hostname.service)
ln -sfn /usr/share/zoneinfo/Etc/UTC /etc/localtime

# The image's python compiles the image's Python code (3.13 .pyc files: no compile at first boot).
python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash /usr/lib/python3/dist-packages >/dev/null

# Mark /etc and /var as up to date with /usr: otherwise every first boot of a data partition runs
# ldconfig, the hwdb and journal catalog rebuilds (ConditionNeedsUpdate), minutes under emulation, for
# nothing: the image's /usr never changes under a running node.
touch /etc/.updated /var/.updated

# The initramfs with the MaculaOS boot script (scripts/macula, hooks/macula from the overlay): only the
# modules hooks/macula lists (storage, USB, file systems), not "most": a 38 MB initrd costs seconds per
# boot under emulation and on small machines. zstd, as the squashfs.
sed -i -e 's/^MODULES=.*/MODULES=list/' -e 's/^#\?COMPRESS=.*/COMPRESS=zstd/' /etc/initramfs-tools/initramfs.conf
update-initramfs -u -k all
