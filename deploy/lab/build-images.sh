#!/usr/bin/env bash
# Build the Ferryman lab images (see docs/lab-notes.md):
#
#   migration-vmlinuz, migration-initrd.img   the PXE "migration image" (kernel + initramfs whose
#                                             /init fetches and runs the per-VM configure script)
#   base-image.tar.zst                        a small Debian 12 userland (no kernel, no /boot)
#   kernel.tar.zst                            /boot (vmlinuz, config, LVM-aware initrd) and
#                                             usr/lib/modules/<ver> of the base image's kernel
#   legacy-bullseye.tar.zst                   legacy roots unlike the base image (the lab's mixed
#   legacy-bookworm-netplan.tar.zst           legacy hosts): Debian 11 with sysvinit; Debian 12
#   legacy-bookworm-networkd.tar.zst          with netplan, or with systemd-networkd, and no
#                                             ifupdown. Packed like the base image (no kernel).
#
# Usage: sudo deploy/lab/build-images.sh         prints the output folder on its last line
# Env:   FERRY_LAB_CACHE   cache root (default ~/.cache/ferryman/lab)
#        FERRY_LAB_MIRROR  Debian mirror for debootstrap (default: the first one apt uses here)
#        FERRY_LAB_PRUNE=1 remove the build chroots after a successful build (they are kept, keyed
#                          by their own recipe, so that changing only the initramfs is quick)
#        FERRY_LAB_NO_APT=1  do not apt-get install the host build dependencies
#        FERRY_LAB_KEEP_OLD=1  keep the image folders of earlier inputs (default: removed)
#
# Idempotent: the outputs live in $CACHE/images-<hash>, where <hash> covers this script, the files
# copied into the initramfs and the suite. A folder with a .complete stamp is reused as it is.
# The chroots live in $CACHE/roots/<name>-<hash of their own recipe> (base, tools, and the legacy
# ones: bullseye, netplan, networkd).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${FERRY_LAB_CACHE:-$HOME/.cache/ferryman/lab}"
SUITE=bookworm

# Host dependencies (bind9: the lab's authoritative DNS for the cutover; iptables: the group
# networks' outbound block; rsync: the cutover's catch-up). Everything that goes
# INTO the images comes from the debootstrap'd chroots below, not from the host, so the images do
# not depend on what the host runs.
HOST_PKGS=(debootstrap zstd cpio kmod qemu-system-x86 qemu-utils ipxe-qemu python3 iproute2
    openssh-client bind9 iptables rsync)

# The base image: what a migrated VM without a root archive runs, and the root of the shop's
# legacy hosts (db1 runs MariaDB and PostgreSQL: Debian's `postgresql`, 15 on bookworm).
BASE_PKGS=(systemd-sysv udev dbus linux-image-amd64 initramfs-tools lvm2 xfsprogs e2fsprogs
    openssh-server rsync curl ca-certificates iptables mariadb-server postgresql nginx ifupdown
    isc-dhcp-client iproute2 iputils-ping procps less zstd tar gzip util-linux kmod)
# Left out of every package the base image installs (dpkg's path-exclude: the packages stay
# installed as far as dpkg and apt know). PostgreSQL's JIT: libLLVM (105 MB), the Z3 library
# only it uses (23 MB) and PostgreSQL's bitcode (26 MB), which every root archive of a host
# made from this image would carry and every new VM unpack (under TCG, unpacking is most of
# the configuring time); without its provider (llvmjit.so) PostgreSQL turns JIT off by itself.
# Quoted: dpkg's patterns, not this machine's files.
BASE_DPKG_EXCLUDES=('/usr/lib/x86_64-linux-gnu/libLLVM-*' '/usr/lib/x86_64-linux-gnu/libz3.so*'
    '/usr/lib/postgresql/*/lib/llvmjit*' '/usr/lib/postgresql/*/lib/bitcode*')

# The legacy roots (the lab's mixed site, examples/legacy/site.yaml). Debian 11 with sysvinit as
# init (no systemd-sysv), and what a rebuilt VM needs to boot and be checked; no kernel (a new VM
# gets kernel.tar.zst), no MariaDB.
LEGACY_SUITE=bullseye
BULLSEYE_PKGS=(sysvinit-core initscripts udev kmod lvm2 xfsprogs e2fsprogs ifupdown
    openssh-server curl ca-certificates iproute2 iputils-ping procps rsync zstd tar gzip
    util-linux nginx-light less)
# Debian 12 from the base chroot, its ifupdown purged: netplan (rendering for systemd-networkd),
# or systemd-networkd configured directly.
NETPLAN_PKGS=(netplan.io)
NETPLAN_PURGE=(ifupdown)
NETWORKD_PURGE=(ifupdown isc-dhcp-client)

# The migration image's tools. Only the binaries listed in INITRD_BINS (and their libraries) end
# up in the initramfs; the chroot is just a clean, host-independent place to take them from.
TOOLS_PKGS=(busybox-static bash curl ca-certificates fdisk parted util-linux lvm2 dmsetup
    xfsprogs e2fsprogs tar zstd coreutils grub-pc-bin grub2-common kmod iproute2 gzip)
INITRD_BINS=(
    /usr/bin/bash /usr/bin/curl /usr/bin/tar /usr/bin/zstd /usr/bin/sha256sum /usr/bin/gzip
    /usr/sbin/sfdisk /usr/sbin/fdisk /usr/sbin/parted /usr/sbin/partprobe /usr/sbin/wipefs
    /usr/sbin/blkid /usr/bin/lsblk /usr/bin/findmnt /usr/sbin/blockdev /usr/bin/mount
    /usr/bin/umount /usr/sbin/lvm /usr/sbin/dmsetup
    /usr/sbin/mkfs.xfs /usr/sbin/xfs_repair /usr/sbin/xfs_admin /usr/sbin/xfs_growfs
    /usr/sbin/mke2fs /usr/sbin/e2fsck /usr/sbin/tune2fs /usr/sbin/resize2fs
    /usr/sbin/grub-install /usr/bin/grub-mkimage /usr/sbin/grub-probe
    /usr/lib/grub/i386-pc/grub-bios-setup
    /usr/bin/grub-editenv /usr/bin/kmod /usr/sbin/chroot
)
# Names that are symlinks to one of the binaries above.
INITRD_LINKS=(
    "usr/sbin/mkfs.ext3 mke2fs" "usr/sbin/mkfs.ext4 mke2fs" "usr/sbin/mkfs.ext2 mke2fs"
    "usr/sbin/fsck.ext3 e2fsck" "usr/sbin/fsck.ext4 e2fsck"
    "usr/sbin/modprobe ../bin/kmod" "usr/sbin/insmod ../bin/kmod" "usr/sbin/rmmod ../bin/kmod"
    "usr/sbin/lsmod ../bin/kmod" "usr/sbin/depmod ../bin/kmod" "usr/sbin/modinfo ../bin/kmod"
)
LVM_CMDS=(pvcreate pvremove pvs pvscan pvdisplay vgcreate vgremove vgchange vgs vgscan vgdisplay
    vgextend lvcreate lvremove lvchange lvs lvscan lvdisplay lvextend lvresize)
# Kernel modules for the migration image (dependencies are added by modprobe --show-depends,
# which skips a name it does not know: each of these is a module of Debian 12's 6.1 kernel).
# Disks on virtio (virtio_blk), SCSI (virtio_scsi, sd_mod) and SATA, whose AHCI controller on
# QEMU's q35 and pc machines needs ahci and libata, SCSI's core (scsi_mod) and sd_mod again.
INITRD_MODULES=(virtio_pci virtio_net virtio_blk virtio_scsi scsi_mod sd_mod ahci libahci libata
    af_packet dm_mod xfs ext4 crc32c_generic crc32c_intel libcrc32c)

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build-images: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap and chroot need it)"

# --- host dependencies ----------------------------------------------------------------------------
# Checked on every run, not only when building: running the lab needs them too (QEMU, ssh).
if [[ "${FERRY_LAB_NO_APT:-0}" != 1 ]]; then
    missing=()
    for p in "${HOST_PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$p")
    done
    if ((${#missing[@]})); then
        say "installing host packages: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
            || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
                --no-install-recommends "${missing[@]}"; }
    fi
fi

# --- cache key ------------------------------------------------------------------------------------
KEY_INPUTS=("$HERE/build-images.sh" "$HERE/migration-init.sh" "$HERE/udhcpc.script")
KEY="$( { for f in "${KEY_INPUTS[@]}"; do sha256sum <"$f"; done; echo "$SUITE"; } \
    | sha256sum | cut -c1-16)"
OUT="$CACHE/images-$KEY"
if [[ -f "$OUT/.complete" ]]; then
    say "images are up to date in $OUT"
    ln -sfn "images-$KEY" "$CACHE/latest"
    echo "$OUT"
    exit 0
fi

# The mirror: the one apt already uses on this machine, unless told otherwise.
detect_mirror() {
    local uri
    uri="$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '{print $2}' | grep -v -- '-security' | head -n1 || true)"
    if [[ -z "$uri" ]]; then
        uri="$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | grep -v -- '-security' | awk '{print $2}' | head -n1 || true)"
    fi
    [[ -n "$uri" ]] || die "no Debian mirror found in apt's sources; set FERRY_LAB_MIRROR"
    echo "$uri"
}
MIRROR="${FERRY_LAB_MIRROR:-$(detect_mirror)}"

WORK="$CACHE/build-$KEY"   # logs and the initramfs staging folder
DEBS="$CACHE/debs"        # debootstrap's and apt's download cache, shared by all builds
ROOTS="$CACHE/roots"
mkdir -p "$WORK" "$DEBS" "$OUT" "$ROOTS"

# --- chroot helpers -------------------------------------------------------------------------------
# /dev in a chroot is a private tmpfs with a few nodes, never a bind mount of the host's /dev, so
# that removing a chroot can never remove a host device node.
chroot_mount() {
    local r=$1
    mountpoint -q "$r/proc" || mount -t proc proc "$r/proc"
    mountpoint -q "$r/sys" || mount -t sysfs sysfs "$r/sys"
    if ! mountpoint -q "$r/dev"; then
        mount -t tmpfs -o mode=755,size=16m devtmpfs-lab "$r/dev"
        mknod -m 666 "$r/dev/null" c 1 3; mknod -m 666 "$r/dev/zero" c 1 5
        mknod -m 666 "$r/dev/full" c 1 7; mknod -m 666 "$r/dev/random" c 1 8
        mknod -m 666 "$r/dev/urandom" c 1 9; mknod -m 666 "$r/dev/tty" c 5 0
        mkdir -p "$r/dev/pts" "$r/dev/shm"
        ln -s /proc/self/fd "$r/dev/fd"
    fi
}
chroot_umount() {
    local r=$1 m
    for m in dev sys proc; do
        if mountpoint -q "$r/$m"; then umount -l "$r/$m"; fi
    done
}
safe_rm() {   # rm -rf a chroot only when nothing is mounted below it
    local r=$1
    [[ -e "$r" ]] || return 0
    chroot_umount "$r"
    if awk -v r="$(realpath "$r")/" 'index($2"/", r) == 1 {found=1} END {exit !found}' /proc/mounts
    then die "refusing to remove $r: something is still mounted below it"; fi
    rm -rf --one-file-system "$r"
}
CHROOTS=()
cleanup() { local r; for r in "${CHROOTS[@]}"; do chroot_umount "$r"; done; }
trap cleanup EXIT

debootstrap_into() {   # debootstrap_into DIR PKG,PKG
    local dir=$1 include=$2 log
    log="$WORK/$(basename "$1").debootstrap.log"
    say "debootstrap $SUITE into $dir (log: $log)"
    safe_rm "$dir"
    if ! debootstrap --variant=minbase --cache-dir="$DEBS" --include="$include" \
        "$SUITE" "$dir" "$MIRROR" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        [[ -f "$dir/debootstrap/debootstrap.log" ]] && tail -n 30 "$dir/debootstrap/debootstrap.log" >&2
        die "debootstrap failed"
    fi
}

apt_in() {   # apt_in DIR PKG...
    local r=$1; shift
    chroot_mount "$r"
    printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"; chmod +x "$r/usr/sbin/policy-rc.d"
    # Reuse the shared download cache.
    mkdir -p "$r/var/cache/apt/archives"
    find "$DEBS" -maxdepth 1 -name '*.deb' -exec cp -n {} "$r/var/cache/apt/archives/" \;
    chroot "$r" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get update -q
    chroot "$r" env DEBIAN_FRONTEND=noninteractive LC_ALL=C \
        apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
    cp -n "$r"/var/cache/apt/archives/*.deb "$DEBS/" 2>/dev/null || true
    rm -f "$r/usr/sbin/policy-rc.d"
}

T0=$SECONDS
declare -A TIMES

# --- base chroot ----------------------------------------------------------------------------------
build_base_chroot() {   # build_base_chroot DIR
    local BASE=$1
    debootstrap_into "$BASE" "systemd-sysv,udev,kmod,apt"
    mkdir -p "$BASE/etc/dpkg/dpkg.cfg.d"
    printf 'path-exclude=%s\n' "${BASE_DPKG_EXCLUDES[@]}" >"$BASE/etc/dpkg/dpkg.cfg.d/ferry-lab"
    say "installing the base packages (log: $WORK/base-apt.log)"
    apt_in "$BASE" "${BASE_PKGS[@]}" >"$WORK/base-apt.log" 2>&1 \
        || { tail -n 40 "$WORK/base-apt.log" >&2; die "apt-get in the base chroot failed"; }
    # Debian's postinst made PostgreSQL's cluster <major>/main (configuration in /etc/postgresql,
    # data in /var/lib/postgresql), as on any host with the package: the legacy db1 runs it
    # (lab/legacy), and the plans leave its data out of root archives. Its server needs nothing
    # the excludes above left out.
    compgen -G "$BASE/etc/postgresql/*/main/postgresql.conf" >/dev/null \
        || die "no PostgreSQL cluster in the base chroot (see $WORK/base-apt.log)"
    # pg_createcluster gave it the first port free on the build machine, which may run a
    # PostgreSQL of its own on 5432: the image's cluster is on PostgreSQL's port, as on a host
    # of its own (a socket dump without a port asks for 5432's).
    sed -i -E 's/^port = [0-9]+/port = 5432/' "$BASE"/etc/postgresql/*/main/postgresql.conf
    if chroot "$BASE" sh -c 'ldd /usr/lib/postgresql/*/bin/postgres' | grep 'not found'; then
        die "PostgreSQL's server lacks a library in the base chroot"
    fi
    # What an LVM + xfs root on virtio needs in the initrd (rebuilt below).
    mkdir -p "$BASE/etc/initramfs-tools/conf.d"
    printf 'MODULES=most\nCOMPRESS=zstd\n' >"$BASE/etc/initramfs-tools/conf.d/ferry-lab.conf"
    printf '%s\n' dm_mod xfs ext4 virtio_pci virtio_blk virtio_scsi virtio_net \
        >>"$BASE/etc/initramfs-tools/modules"

    # System settings a migrated VM expects and the configure script does not write.
    echo ferry-base >"$BASE/etc/hostname"
    printf 'auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n' \
        >"$BASE/etc/network/interfaces"
    : >"$BASE/etc/fstab"
    rm -f "$BASE/etc/resolv.conf"   # debootstrap copied the host's; the configure script writes one
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$BASE/etc/hosts"
    : >"$BASE/etc/machine-id"   # a new id on first boot
    rm -f "$BASE"/etc/ssh/ssh_host_*
    # Debian's ssh.service does not make missing host keys; make them on first boot.
    cat >"$BASE/etc/systemd/system/ferry-ssh-hostkeys.service" <<'UNIT'
[Unit]
Description=Generate missing SSH host keys
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
UNIT
    mkdir -p "$BASE/etc/systemd/system/multi-user.target.wants"
    ln -sf ../ferry-ssh-hostkeys.service \
        "$BASE/etc/systemd/system/multi-user.target.wants/ferry-ssh-hostkeys.service"

    # The initrd the base kernel boots with: MODULES=most, lvm2's hook, zstd.
    chroot_mount "$BASE"
    chroot "$BASE" update-initramfs -u -k all >>"$WORK/base-apt.log" 2>&1
    chroot "$BASE" sh -c 'lsinitramfs /boot/initrd.img-*' >"$WORK/base-initrd.list"
    grep -qE '(^|/)s?bin/lvm$' "$WORK/base-initrd.list" \
        || die "the base initrd has no lvm binary (see $WORK/base-initrd.list)"
    grep -q '/dm-mod.ko' "$WORK/base-initrd.list" || die "the base initrd has no dm-mod"
    grep -q '/xfs.ko' "$WORK/base-initrd.list" || die "the base initrd has no xfs"
    chroot "$BASE" apt-get clean
    rm -rf "$BASE"/var/lib/apt/lists/*
    chroot_umount "$BASE"
}
# A chroot is reused while its recipe (the packages, the suite, the functions that build it) is
# unchanged.
recipe_key() { { declare -f "$1" debootstrap_into apt_in; shift; printf '%s\n' "$SUITE" "$@"; } \
    | sha256sum | cut -c1-16; }
ensure_chroot() {   # ensure_chroot NAME BUILD_FUNCTION PKGS... ; sets CHROOT_DIR
    local name=$1 fn=$2; shift 2
    local key dir t
    key="$(recipe_key "$fn" "$@")"
    dir="$ROOTS/$name-$key"
    CHROOTS+=("$dir")
    if [[ -f "$dir.stamp" ]]; then
        TIMES[${name}_chroot]="$(cat "$dir.stamp") (cached)"
    else
        t=$SECONDS
        "$fn" "$dir"
        TIMES[${name}_chroot]=$((SECONDS - t))
        echo "${TIMES[${name}_chroot]}" >"$dir.stamp"
    fi
    # drop chroots of older recipes
    local old
    for old in "$ROOTS/$name"-*; do
        [[ "$old" == "$dir" || "$old" == "$dir.stamp" ]] && continue
        case "$old" in *.stamp) rm -f "$old" ;; *) safe_rm "$old" ;; esac
    done
    CHROOT_DIR=$dir
}
ensure_chroot base build_base_chroot "${BASE_PKGS[@]}" -- "${BASE_DPKG_EXCLUDES[@]}"
BASE=$CHROOT_DIR

KVER="$(find "$BASE/usr/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | head -n1)"
[[ -n "$KVER" && -f "$BASE/boot/vmlinuz-$KVER" ]] || die "no kernel found in the base chroot"
say "base kernel: $KVER"

# --- base image and kernel tarballs ---------------------------------------------------------------
t=$SECONDS
say "packing kernel.tar.zst"
tar -C "$BASE" --numeric-owner -cf - boot usr/lib/modules \
    | zstd -q -T0 -10 -o "$OUT/kernel.tar.zst.tmp" -f
mv "$OUT/kernel.tar.zst.tmp" "$OUT/kernel.tar.zst"
# A root tarball (the base image, the legacy roots). No kernel: the configure script installs
# kernel.tar.zst separately, as it will do on top of a VM's own root archive.
# --xattrs keeps file capabilities (ping). No --acls: GNU tar stores ACL entries by user/group
# NAME, which the migration image cannot resolve (only systemd-tmpfiles' ACL on /var/log/journal
# is lost, and it is set again at boot).
pack_root() {   # pack_root CHROOT NAME: $OUT/NAME
    local r=$1 name=$2
    say "packing $name"
    tar -C "$r" --numeric-owner --xattrs --xattrs-include='*' -cf - \
        --exclude=./proc/* --exclude=./sys/* --exclude=./dev/* --exclude=./run/* \
        --exclude=./tmp/* --exclude=./boot/* --exclude=./usr/lib/modules/* \
        --exclude=./var/cache/apt/archives/*.deb --exclude=./debootstrap . \
        | zstd -q -T0 -10 -o "$OUT/$name.tmp" -f
    mv "$OUT/$name.tmp" "$OUT/$name"
}
pack_root "$BASE" base-image.tar.zst
TIMES[pack]=$((SECONDS - t))

# --- legacy roots ---------------------------------------------------------------------------------
# The lab's mixed legacy site (examples/legacy/site.yaml) has hosts unlike the base image, each
# from its own root: Debian 11 with sysvinit, Debian 12 with netplan, Debian 12 with
# systemd-networkd. Each has the base image's system settings where they apply (no SSH host
# keys, empty machine-id, no resolv.conf, empty fstab); the host's network configuration is its
# overlay's (examples/legacy/<host>), not the image's.
settle_root() {   # settle_root CHROOT HOSTNAME
    local r=$1
    echo "$2" >"$r/etc/hostname"
    : >"$r/etc/fstab"
    rm -f "$r/etc/resolv.conf"
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$r/etc/hosts"
    : >"$r/etc/machine-id"
    rm -f "$r"/etc/ssh/ssh_host_*
}
purge_in() {   # purge_in CHROOT PKG...: apt-get purge, no service started or stopped
    local r=$1; shift
    chroot_mount "$r"
    printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"; chmod +x "$r/usr/sbin/policy-rc.d"
    chroot "$r" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get purge -y -q "$@"
    rm -f "$r/usr/sbin/policy-rc.d"
}
installed_in() {   # installed_in CHROOT PKG...: dies unless each is installed (apt_in's own
    local r=$1 p; shift   # status is its last command's, not apt-get's)
    for p in "$@"; do
        chroot "$r" dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || die "$p is not installed in $r"
    done
}
finish_chroot() {   # finish_chroot CHROOT: no download cache, no package lists, nothing mounted
    chroot "$1" apt-get clean
    rm -rf "$1"/var/lib/apt/lists/*
    chroot_umount "$1"
}
# Part of every legacy chroot's recipe, with its packages.
LEGACY_HELPERS="$(declare -f settle_root purge_in installed_in finish_chroot)"

build_bullseye_chroot() {   # build_bullseye_chroot DIR: Debian 11, sysvinit as init
    local R=$1 SUITE=$LEGACY_SUITE init   # debootstrap_into reads SUITE
    debootstrap_into "$R" "sysvinit-core,kmod,apt"
    say "installing the bullseye packages (log: $WORK/bullseye-apt.log)"
    apt_in "$R" "${BULLSEYE_PKGS[@]}" >"$WORK/bullseye-apt.log" 2>&1 \
        || { tail -n 40 "$WORK/bullseye-apt.log" >&2; die "apt-get in the bullseye chroot failed"; }
    installed_in "$R" "${BULLSEYE_PKGS[@]}"
    # sysvinit's init, not systemd's; initscripts' rc.local, which runs /etc/rc.local last in
    # the boot (where a first-boot hook goes on such a system).
    if chroot "$R" dpkg-query -W -f='${Status}' systemd-sysv 2>/dev/null \
            | grep -q 'install ok installed'; then
        die "systemd-sysv is installed in the bullseye chroot"
    fi
    chroot "$R" dpkg -S /sbin/init | grep -q '^sysvinit-core: ' \
        || die "/sbin/init in the bullseye chroot is not sysvinit-core's"
    init="$(chroot "$R" readlink -f /sbin/init)"
    [[ -f "$R$init" && ! -L "$R$init" && "$init" != *systemd* ]] \
        || die "/sbin/init in the bullseye chroot resolves to $init"
    [[ -x "$R/etc/init.d/rc.local" ]] || die "no /etc/init.d/rc.local in the bullseye chroot"

    settle_root "$R" ferry-bullseye
    printf 'auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n' \
        >"$R/etc/network/interfaces"
    # Debian's /etc/init.d/ssh makes no host keys, and nothing else makes a machine id under
    # sysvinit: an init script does both at boot, before ssh (insserv orders it).
    cat >"$R/etc/init.d/ferry-hostkeys" <<'INIT'
#!/bin/sh
### BEGIN INIT INFO
# Provides:          ferry-hostkeys
# Required-Start:    $local_fs
# Required-Stop:
# X-Start-Before:    sshd
# Default-Start:     2 3 4 5
# Default-Stop:
# Short-Description: Make missing SSH host keys and an empty machine id
### END INIT INFO
case "$1" in
    start)
        [ -s /etc/machine-id ] || tr -d - </proc/sys/kernel/random/uuid >/etc/machine-id
        ssh-keygen -A
        ;;
    stop|restart|force-reload|status) ;;
    *) echo "Usage: $0 start" >&2; exit 3 ;;
esac
exit 0
INIT
    chmod 0755 "$R/etc/init.d/ferry-hostkeys"
    chroot "$R" update-rc.d ferry-hostkeys defaults >>"$WORK/bullseye-apt.log" 2>&1
    compgen -G "$R/etc/rc2.d/S*ferry-hostkeys" >/dev/null \
        || die "update-rc.d did not enable ferry-hostkeys in the bullseye chroot"
    grep -Eq '^ssh: .*ferry-hostkeys' "$R/etc/init.d/.depend.start" \
        || die "ssh does not start after ferry-hostkeys in the bullseye chroot"
    # A login on the serial console (systemd makes one by itself; sysvinit from inittab).
    grep -q '^T0:' "$R/etc/inittab" \
        || echo 'T0:23:respawn:/sbin/getty -L ttyS0 115200 vt100' >>"$R/etc/inittab"
    # No welcome page: a legacy web server serves its own site (the host's overlay).
    rm -f "$R/etc/nginx/sites-enabled/default"
    finish_chroot "$R"
}

build_netplan_chroot() {   # build_netplan_chroot DIR: the base chroot, netplan, no ifupdown
    local R=$1
    say "copying the base chroot into $R"
    safe_rm "$R"
    chroot_umount "$BASE"
    cp -a --one-file-system "$BASE" "$R"
    cp /etc/resolv.conf "$R/etc/resolv.conf"   # the base has none (settle_root removes it again)
    say "installing netplan.io (log: $WORK/netplan-apt.log)"
    { apt_in "$R" "${NETPLAN_PKGS[@]}" && purge_in "$R" "${NETPLAN_PURGE[@]}"; } \
        >"$WORK/netplan-apt.log" 2>&1 \
        || { tail -n 40 "$WORK/netplan-apt.log" >&2; die "apt-get in the netplan chroot failed"; }
    installed_in "$R" "${NETPLAN_PKGS[@]}"
    # netplan's systemd generator renders /etc/netplan/*.yaml for networkd at each boot.
    chroot "$R" test -x /lib/systemd/system-generators/netplan \
        || die "no netplan generator in the netplan chroot"
    [[ ! -e "$R/sbin/ifup" ]] || die "ifupdown is still in the netplan chroot"
    rm -rf "$R/etc/network/interfaces" "$R/etc/network/interfaces.d"
    settle_root "$R" ferry-netplan
    finish_chroot "$R"
}

build_networkd_chroot() {   # build_networkd_chroot DIR: the base chroot, systemd-networkd
    local R=$1 w
    say "copying the base chroot into $R"
    safe_rm "$R"
    chroot_umount "$BASE"
    cp -a --one-file-system "$BASE" "$R"
    purge_in "$R" "${NETWORKD_PURGE[@]}" >"$WORK/networkd-apt.log" 2>&1 \
        || { tail -n 40 "$WORK/networkd-apt.log" >&2; die "apt-get in the networkd chroot failed"; }
    [[ ! -e "$R/sbin/ifup" ]] || die "ifupdown is still in the networkd chroot"
    rm -rf "$R/etc/network/interfaces" "$R/etc/network/interfaces.d"
    # As an administrator would (its [Install] brings the socket and wait-online along).
    chroot "$R" systemctl enable systemd-networkd.service >>"$WORK/networkd-apt.log" 2>&1
    w="$R/etc/systemd/system"
    for unit in multi-user.target.wants/systemd-networkd.service \
        sockets.target.wants/systemd-networkd.socket \
        network-online.target.wants/systemd-networkd-wait-online.service; do
        [[ -L "$w/$unit" ]] || die "systemd-networkd is not enabled in the networkd chroot: $unit"
    done
    settle_root "$R" ferry-networkd
    finish_chroot "$R"
}

# Derived chroots are rebuilt with the base chroot (its folder name is its recipe's key).
ensure_chroot bullseye build_bullseye_chroot "$LEGACY_HELPERS" "$LEGACY_SUITE" \
    "${BULLSEYE_PKGS[@]}"
BULLSEYE=$CHROOT_DIR
ensure_chroot netplan build_netplan_chroot "$LEGACY_HELPERS" "$(basename "$BASE")" \
    "${NETPLAN_PKGS[@]}" -- "${NETPLAN_PURGE[@]}"
NETPLAN=$CHROOT_DIR
ensure_chroot networkd build_networkd_chroot "$LEGACY_HELPERS" "$(basename "$BASE")" \
    -- "${NETWORKD_PURGE[@]}"
NETWORKD=$CHROOT_DIR
LEGACY_IMAGES=(legacy-bullseye.tar.zst legacy-bookworm-netplan.tar.zst
    legacy-bookworm-networkd.tar.zst)
t=$SECONDS
pack_root "$BULLSEYE" legacy-bullseye.tar.zst
pack_root "$NETPLAN" legacy-bookworm-netplan.tar.zst
pack_root "$NETWORKD" legacy-bookworm-networkd.tar.zst
TIMES[pack_legacy]=$((SECONDS - t))

# --- tools chroot ---------------------------------------------------------------------------------
build_tools_chroot() { debootstrap_into "$1" "$(IFS=,; echo "${TOOLS_PKGS[*]}")"; }
ensure_chroot tools build_tools_chroot "${TOOLS_PKGS[@]}"
TOOLS=$CHROOT_DIR

# --- migration initramfs --------------------------------------------------------------------------
t=$SECONDS
say "assembling the migration initramfs"
STAGE="$WORK/initrd-stage"
rm -rf "$STAGE"
mkdir -p "$STAGE"/{usr/bin,usr/sbin,usr/lib,usr/lib64,etc,proc,sys,dev,run,tmp,newroot,root,var}
ln -s usr/bin "$STAGE/bin"; ln -s usr/sbin "$STAGE/sbin"
ln -s usr/lib "$STAGE/lib"; ln -s usr/lib64 "$STAGE/lib64"
chmod 1777 "$STAGE/tmp"

copy_from_tools() {   # copy one path (file or symlink, as it is) from the tools chroot
    local p=$1
    [[ -e "$STAGE$p" || -L "$STAGE$p" ]] && return 0
    mkdir -p "$STAGE$(dirname "$p")"
    cp -a "$TOOLS$p" "$STAGE$p"
}
copy_with_libs() {   # copy a binary and every library ldd (run in the chroot) names
    local bin=$1 real lib
    real="$(chroot "$TOOLS" readlink -f "$bin")"
    [[ -e "$TOOLS$real" ]] || die "$bin is not in the tools chroot"
    copy_from_tools "$real"
    [[ "$real" == "$bin" ]] || { mkdir -p "$STAGE$(dirname "$bin")"; ln -sf "$real" "$STAGE$bin"; }
    while read -r lib; do
        [[ -n "$lib" ]] || continue
        # keep the path the loader asks for (a symlink) and the file it points to
        copy_from_tools "$lib"
        copy_from_tools "$(chroot "$TOOLS" readlink -f "$lib")"
    done < <(chroot "$TOOLS" ldd "$real" 2>/dev/null \
        | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}')
}
for b in "${INITRD_BINS[@]}"; do copy_with_libs "$b"; done
for l in "${INITRD_LINKS[@]}"; do
    read -r name target <<<"$l"; ln -sf "$target" "$STAGE/$name"
done
for c in "${LVM_CMDS[@]}"; do ln -sf lvm "$STAGE/usr/sbin/$c"; done
# busybox for the shell, udhcpc, ip, poweroff and the rest; real tools above win over applets.
cp "$TOOLS/usr/bin/busybox" "$STAGE/usr/bin/busybox"
while read -r applet; do
    [[ -e "$STAGE/$applet" || -L "$STAGE/$applet" ]] && continue
    mkdir -p "$STAGE/$(dirname "$applet")"
    ln -s /usr/bin/busybox "$STAGE/$applet"
done < <(chroot "$TOOLS" /usr/bin/busybox --list-full)
# GRUB's i386-pc modules and data, TLS roots, config files the tools read
mkdir -p "$STAGE/usr/lib/grub" "$STAGE/usr/share"
cp -a "$TOOLS/usr/lib/grub/i386-pc" "$STAGE/usr/lib/grub/"
cp -a "$TOOLS/usr/share/grub" "$STAGE/usr/share/"
cp -a "$TOOLS/etc/ssl" "$STAGE/etc/"
cp -a "$TOOLS/usr/share/ca-certificates" "$STAGE/usr/share/" 2>/dev/null || true
cp -a "$TOOLS/etc/mke2fs.conf" "$STAGE/etc/"
mkdir -p "$STAGE/etc/lvm"
# No udev in the migration image: LVM makes its own /dev nodes.
cat >"$STAGE/etc/lvm/lvm.conf" <<'LVM'
activation {
    udev_sync = 0
    udev_rules = 0
}
devices {
    obtain_device_list_from_udev = 0
}
LVM
printf 'root:x:0:0:root:/root:/bin/bash\n' >"$STAGE/etc/passwd"
printf 'root:x:0:\n' >"$STAGE/etc/group"
printf 'hosts: files dns\n' >"$STAGE/etc/nsswitch.conf"
mkdir -p "$STAGE/etc/udhcpc"
install -m 0755 "$HERE/udhcpc.script" "$STAGE/etc/udhcpc/default.script"
install -m 0755 "$HERE/migration-init.sh" "$STAGE/init"

# kernel modules (from the base kernel, so migration and base kernels are the same build)
MODDIR="usr/lib/modules/$KVER"
mkdir -p "$STAGE/$MODDIR"
chroot_mount "$BASE"
while read -r kind path _; do
    [[ "$kind" == insmod ]] || continue
    mkdir -p "$STAGE$(dirname "$path")"
    cp -n "$BASE$path" "$STAGE$path"
done < <(for m in "${INITRD_MODULES[@]}"; do
    chroot "$BASE" modprobe -S "$KVER" --show-depends "$m" 2>/dev/null || true; done)
chroot_umount "$BASE"
cp "$BASE/$MODDIR"/modules.{order,builtin,builtin.modinfo} "$STAGE/$MODDIR/" 2>/dev/null || true
depmod -b "$STAGE" "$KVER"
printf '%s\n' "${INITRD_MODULES[@]}" >"$STAGE/etc/ferry-modules"

cp "$BASE/boot/vmlinuz-$KVER" "$OUT/migration-vmlinuz"
(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) \
    | gzip -6 >"$OUT/migration-initrd.img.tmp"
mv "$OUT/migration-initrd.img.tmp" "$OUT/migration-initrd.img"
TIMES[initrd]=$((SECONDS - t))

# --- manifest -------------------------------------------------------------------------------------
{
    echo "key=$KEY"
    echo "suite=$SUITE"
    echo "legacy_suite=$LEGACY_SUITE"
    echo "kernel=$KVER"
    echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    for k in "${!TIMES[@]}"; do echo "seconds_$k=${TIMES[$k]}"; done
    echo "seconds_total=$((SECONDS - T0))"
    echo "initrd_files=$(find "$STAGE" | wc -l)"
    echo "initrd_unpacked_bytes=$(du -sb "$STAGE" | cut -f1)"
    for f in migration-vmlinuz migration-initrd.img base-image.tar.zst kernel.tar.zst \
        "${LEGACY_IMAGES[@]}"; do
        echo "bytes_$f=$(stat -c %s "$OUT/$f")"
        echo "sha256_$f=$(sha256sum "$OUT/$f" | cut -d' ' -f1)"
    done
    echo "base_unpacked_bytes=$(zstd -dc "$OUT/base-image.tar.zst" | wc -c)"
    for f in "${LEGACY_IMAGES[@]}"; do
        echo "unpacked_bytes_$f=$(zstd -dc "$OUT/$f" | wc -c)"
    done
} >"$OUT/manifest.txt"
say "manifest:"; sed 's/^/    /' "$OUT/manifest.txt" >&2

rm -rf "$STAGE"
if [[ "${FERRY_LAB_PRUNE:-0}" == 1 ]]; then
    for r in "$BASE" "$TOOLS" "$BULLSEYE" "$NETPLAN" "$NETWORKD"; do
        safe_rm "$r"; rm -f "$r.stamp"
    done
fi
touch "$OUT/.complete"
ln -sfn "images-$KEY" "$CACHE/latest"
# Older image sets and build logs go, unless asked to keep them.
if [[ "${FERRY_LAB_KEEP_OLD:-0}" != 1 ]]; then
    for old in "$CACHE"/images-* "$CACHE"/build-*; do
        [[ "$old" == "$OUT" || "$old" == "$WORK" ]] || rm -rf --one-file-system "$old"
    done
fi
say "done in $((SECONDS - T0)) s"
echo "$OUT"
