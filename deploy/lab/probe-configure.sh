#!/bin/bash
# The configure script the boot probe serves as /v1/vms/{vm}/script: a hand-written miniature of
# what the configurator renders (see design.md, "Configure"). boot-probe.sh prepends the values
# a real render would insert:
#   DISK BASE_SHA256 KERNEL_SHA256 ROOT_SIZE BOOT_SIZE [ISOLATION_CHECK_URL]
# The migration image's /init exports FERRY_GATEWAY, FERRY_VM_ID and FERRY_TOKEN.
set -Eeuo pipefail
: "${DISK:=/dev/vda}" "${ROOT_SIZE:=3G}" "${BOOT_SIZE:=256MiB}"
: "${BASE_SHA256:?}" "${KERNEL_SHA256:?}"
STEP=start

now() { cut -d' ' -f1 /proc/uptime; }
api() {
    curl -fsS --retry 5 --retry-all-errors --connect-timeout 5 \
        -H "Authorization: Bearer $FERRY_TOKEN" "$@"
}
post() {   # post KIND JSON
    api -X POST -H 'Content-Type: application/json' --data-binary "$2" \
        "$FERRY_GATEWAY/v1/vms/$FERRY_VM_ID/$1" >/dev/null
}
state_update() { post state "{\"state\":\"$1\",\"step\":\"$2\"}"; }
message_update() { post messages "{\"level\":\"$1\",\"text\":\"$2\"}"; }
step() {
    STEP=$1
    echo "FERRY-STEP: $STEP at $(now)s"
    state_update configuring "$STEP"
}
on_err() {
    local rc=$? line=$1
    echo "FERRY-STEP-FAILED: $STEP rc=$rc line $line"
    state_update failed "$STEP" || true
    message_update error "step $STEP failed with $rc at line $line" || true
    exit "$rc"
}
trap 'on_err $LINENO' ERR

# fetch_unpack NAME SHA256 DEST: stream an archive from the gateway into tar, checking its sha256
fetch_unpack() {
    local name=$1 want=$2 dest=$3 got sumpid
    rm -f "/tmp/$name.fifo"; mkfifo "/tmp/$name.fifo"
    sha256sum <"/tmp/$name.fifo" >"/tmp/$name.sha256" &
    sumpid=$!
    api "$FERRY_GATEWAY/v1/archives/$name" | tee "/tmp/$name.fifo" \
        | zstd -dc | tar -x -C "$dest" --numeric-owner -p --xattrs --xattrs-include='*' --acls
    wait "$sumpid"
    got="$(cut -d' ' -f1 "/tmp/$name.sha256")"
    if [[ "$got" != "$want" ]]; then
        echo "sha256 of $name is $got, expected $want" >&2
        return 1
    fi
}

if [[ -n "${ISOLATION_CHECK_URL:-}" ]]; then
    # restricted user network: the host's loopback must NOT be reachable behind 10.0.2.2
    step isolation
    if curl -fsS -o /dev/null --connect-timeout 5 --max-time 10 "$ISOLATION_CHECK_URL"; then
        echo "FERRY-ISOLATION: $ISOLATION_CHECK_URL is reachable; the guest is not isolated" >&2
        false
    fi
    echo "FERRY-ISOLATION: $ISOLATION_CHECK_URL is not reachable (as wanted)"
fi

step partition
wipefs -a -q "$DISK"
sfdisk -q --wipe always "$DISK" <<EOF
label: dos
start=2048, size=$BOOT_SIZE, type=83, bootable
type=8e
EOF
for _ in $(seq 50); do [[ -b ${DISK}1 && -b ${DISK}2 ]] && break; sleep 0.1; done
BOOT_DEV=${DISK}1 PV_DEV=${DISK}2

step lvm
wipefs -a -q "$PV_DEV"
pvcreate -q -ff -y "$PV_DEV"
vgcreate -q local "$PV_DEV"
lvcreate -q -y -n root -L "$ROOT_SIZE" local
[[ -b /dev/local/root ]]

step mkfs
mkfs.ext3 -q -F -L boot "$BOOT_DEV"
mkfs.xfs -q -f -L root /dev/local/root

step mount
mkdir -p /newroot
mount /dev/local/root /newroot
mkdir -p /newroot/boot
mount "$BOOT_DEV" /newroot/boot

step unpack-base
fetch_unpack base-image.tar.zst "$BASE_SHA256" /newroot
message_update info "base image unpacked: $(du -sm /newroot | cut -f1) MiB"

step kernel
fetch_unpack kernel.tar.zst "$KERNEL_SHA256" /newroot
KVER=
for d in /newroot/usr/lib/modules/*/; do KVER="$(basename "$d")"; break; done
[[ -f /newroot/boot/vmlinuz-$KVER && -f /newroot/boot/initrd.img-$KVER ]]

step fstab
BOOT_UUID="$(blkid -s UUID -o value "$BOOT_DEV")"
cat >/newroot/etc/fstab <<EOF
/dev/local/root  /      xfs   defaults  0 1
UUID=$BOOT_UUID  /boot  ext3  defaults  0 2
EOF
echo ferry-lab-vm >/newroot/etc/hostname
mkdir -p /newroot/etc/ferry
echo "migrating from the lab probe" >/newroot/etc/ferry/migrating

step grub
grub-install --target=i386-pc --boot-directory=/newroot/boot "$DISK"
cat >/newroot/boot/grub/grub.cfg <<EOF
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
set default=0
menuentry 'Debian (Ferryman lab)' {
    insmod part_msdos
    insmod ext2
    search --no-floppy --fs-uuid --set=root $BOOT_UUID
    echo 'FERRY-GRUB: loading $KVER'
    linux /vmlinuz-$KVER root=/dev/local/root ro console=tty0 console=ttyS0,115200
    initrd /initrd.img-$KVER
}
EOF

step marker
cat >/newroot/etc/systemd/system/ferry-lab-marker.service <<'EOF'
[Unit]
Description=Ferryman lab: say that the migrated VM booted
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "FERRY-LAB-BOOTED root=$(findmnt -no SOURCE /) kernel=$(uname -r) uptime=$(cut -d" " -f1 /proc/uptime)s" >/dev/ttyS0'

[Install]
WantedBy=multi-user.target
EOF
ln -sf ../ferry-lab-marker.service \
    /newroot/etc/systemd/system/multi-user.target.wants/ferry-lab-marker.service

step unmount
sync
umount /newroot/boot
umount /newroot
vgchange -q -an local >/dev/null

STEP="done"
state_update configured "done"
echo "FERRY-STEP: done at $(now)s"
