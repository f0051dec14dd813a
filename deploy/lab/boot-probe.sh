#!/usr/bin/env bash
# Prove the lab's boot chain end to end on loopback (see docs/lab-notes.md):
#
#   1. a blank VM with a blank qcow2 disk PXE-boots: QEMU's iPXE ROM gets boot.ipxe over HTTP from
#      a fake gateway on 127.0.0.1 (reached from the guest as 10.0.2.2, QEMU user networking),
#      which loads the migration kernel + initrd with ferry.gateway/vm/token; the initrd's /init
#      fetches /v1/vms/{vm}/script and runs it (probe-configure.sh: partitions, VG local, xfs
#      root, base image, kernel, GRUB), then powers off;
#   2. the same disk boots on its own (-boot c, no NIC) to the marker a oneshot unit prints and a
#      login prompt on the serial console.
#
# Usage: deploy/lab/boot-probe.sh            (builds the images first if needed)
# Env:   FERRY_QEMU_ACCEL   kvm or tcg (default: try kvm for a few seconds, else tcg)
#        FERRY_QEMU_SMP     vCPUs (default 2)
#        FERRY_LAB_RUN      run folder for logs and the disk (default: a new /tmp/ferry-lab-probe.*)
#        FERRY_LAB_IMAGES   image folder (default: what build-images.sh prints)
#        FERRY_LAB_RESTRICT=1  isolate the guest (user net restrict=on) and reach the gateway
#                          through a guestfwd rule instead of 10.0.2.2 (see the notes)
# Timeouts (seconds): FERRY_T_PXE (300), FERRY_T_CONFIGURE (1500), FERRY_T_DISKBOOT (900).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUN="${FERRY_LAB_RUN:-$(mktemp -d /tmp/ferry-lab-probe.XXXXXX)}"
mkdir -p "$RUN"
SMP="${FERRY_QEMU_SMP:-2}"
T_PXE="${FERRY_T_PXE:-300}" T_CONFIGURE="${FERRY_T_CONFIGURE:-1500}"
T_DISKBOOT="${FERRY_T_DISKBOOT:-900}"
VM=lab-vm-1
SUMMARY="$RUN/summary.txt"
: >"$SUMMARY"

say() { printf '==> %s\n' "$*" >&2; }
note() { printf '%s\n' "$*" | tee -a "$SUMMARY" >&2; }
die() { note "FAIL: $*"; exit 1; }

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        if kill -0 "$p" 2>/dev/null; then
            kill "$p" 2>/dev/null || true
            for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done
            kill -9 "$p" 2>/dev/null || true
        fi
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for FILE REGEX TIMEOUT PID: until REGEX appears in FILE; fails on timeout or if PID exits
wait_for() {
    local file=$1 re=$2 timeout=$3 pid=${4:-} start=$SECONDS
    while ! grep -qaE -- "$re" "$file" 2>/dev/null; do
        if ((SECONDS - start >= timeout)); then
            say "timed out after ${timeout}s waiting for /$re/ in $file"; return 1
        fi
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            grep -qaE -- "$re" "$file" 2>/dev/null && return 0
            say "process $pid ended before /$re/ appeared in $file"; return 1
        fi
        sleep 1
    done
}
# wait_exit PID TIMEOUT: until the process ends
wait_exit() {
    local pid=$1 timeout=$2 start=$SECONDS
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS - start < timeout)) || return 1
        sleep 1
    done
}
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- images ---------------------------------------------------------------------------------------
if [[ -n "${FERRY_LAB_IMAGES:-}" ]]; then
    IMAGES=$FERRY_LAB_IMAGES
else
    say "building (or reusing) the images"
    IMAGES="$("$HERE/build-images.sh" | tail -n1)"
fi
for f in migration-vmlinuz migration-initrd.img base-image.tar.zst kernel.tar.zst; do
    [[ -f "$IMAGES/$f" ]] || die "$IMAGES/$f is missing"
done
# QEMU loads its default ROM for virtio-net-pci (efi-virtio.rom, from ipxe-qemu) and patches the
# ROM's PCI device id to the NIC's. A ROM given with romfile= is NOT patched: Debian's ROM says
# 1af4:1041 (modern virtio-net), the NIC is 1af4:1000 (transitional), and SeaBIOS skips the ROM
# ("No bootable device"). So name a ROM only through FERRY_QEMU_NIC_ROM, and only one that matches.
[[ -f /usr/lib/ipxe/qemu/efi-virtio.rom ]] || die "no iPXE ROM for virtio-net (install ipxe-qemu)"
NIC="virtio-net-pci,netdev=n0"
[[ -n "${FERRY_QEMU_NIC_ROM:-}" ]] && NIC+=",romfile=$FERRY_QEMU_NIC_ROM"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing (install qemu-system-x86)"
note "run folder: $RUN"
note "images: $IMAGES"

# --- acceleration ---------------------------------------------------------------------------------
decide_accel() {
    if [[ -n "${FERRY_QEMU_ACCEL:-}" ]]; then echo "$FERRY_QEMU_ACCEL"; return; fi
    if [[ -r /dev/kvm && -w /dev/kvm ]]; then
        local log="$RUN/kvm-check.log" pid
        # A kernel alone prints "Linux version" on the serial console within a second under a
        # working KVM; it then panics (no root) and -no-reboot ends QEMU.
        qemu-system-x86_64 -accel kvm -cpu host -m 256 -nographic -no-reboot -nic none \
            -kernel "$IMAGES/migration-vmlinuz" -append "console=ttyS0 panic=-1" \
            </dev/null >"$log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        if wait_for "$log" 'Linux version' 8 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
            echo kvm; return
        fi
        kill "$pid" 2>/dev/null || true; sleep 1; kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    echo tcg
}
ACCEL="$(decide_accel)"
note "accel: $ACCEL"
QEMU=(qemu-system-x86_64 -accel "$ACCEL" -m 1024 -smp "$SMP" -nographic -no-reboot)
[[ "$ACCEL" == kvm ]] && QEMU+=(-cpu host)

# --- fake gateway ---------------------------------------------------------------------------------
PORT="$(free_port)"
TOKEN="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
GW="$RUN/gateway"
rm -rf "$GW"; mkdir -p "$GW/images" "$GW/archives" "$GW/vms/$VM"
ln -s "$IMAGES/migration-vmlinuz" "$GW/images/migration-vmlinuz"
ln -s "$IMAGES/migration-initrd.img" "$GW/images/migration-initrd.img"
ln -s "$IMAGES/base-image.tar.zst" "$GW/archives/base-image.tar.zst"
ln -s "$IMAGES/kernel.tar.zst" "$GW/archives/kernel.tar.zst"
printf '%s\n' "$TOKEN" >"$GW/vms/$VM/token"

if [[ "${FERRY_LAB_RESTRICT:-0}" == 1 ]]; then
    # The guest can reach nothing but 10.0.2.100:80, which QEMU connects to the gateway.
    GUEST_GW="http://10.0.2.100"
    NETDEV="user,id=n0,restrict=on,bootfile=$GUEST_GW/boot.ipxe"
    NETDEV+=",guestfwd=tcp:10.0.2.100:80-cmd:python3 $HERE/pipe-to-port.py 127.0.0.1 $PORT"
else
    GUEST_GW="http://10.0.2.2:$PORT"
    NETDEV="user,id=n0,bootfile=$GUEST_GW/boot.ipxe"
fi
cat >"$GW/boot.ipxe" <<EOF
#!ipxe
echo FERRY-IPXE: boot.ipxe loaded, fetching the migration image
kernel $GUEST_GW/images/migration-vmlinuz console=ttyS0,115200 panic=10 ferry.gateway=$GUEST_GW ferry.vm=$VM ferry.token=$TOKEN
initrd $GUEST_GW/images/migration-initrd.img
boot
EOF
{
    printf '# rendered for %s by boot-probe.sh\n' "$VM"
    printf 'DISK=/dev/vda\nROOT_SIZE=3G\nBOOT_SIZE=256MiB\n'
    [[ "${FERRY_LAB_RESTRICT:-0}" == 1 ]] \
        && printf 'ISOLATION_CHECK_URL=http://10.0.2.2:%s/boot.ipxe\n' "$PORT"
    printf 'BASE_SHA256=%s\n' "$(sha256sum <"$IMAGES/base-image.tar.zst" | cut -d' ' -f1)"
    printf 'KERNEL_SHA256=%s\n' "$(sha256sum <"$IMAGES/kernel.tar.zst" | cut -d' ' -f1)"
    sed '1d' "$HERE/probe-configure.sh"
} >"$GW/vms/$VM/script.tmp"
{ echo '#!/bin/bash'; cat "$GW/vms/$VM/script.tmp"; } >"$GW/vms/$VM/script"
rm "$GW/vms/$VM/script.tmp"

python3 "$HERE/fake-gateway.py" --port "$PORT" --root "$GW" --events "$RUN/gateway-events.jsonl" \
    >"$RUN/gateway.log" 2>&1 &
PIDS+=("$!")
wait_for "$RUN/gateway.log" 'fake gateway on' 10 "$!" || die "the fake gateway did not start"
# HEAD, so that "GET /boot.ipxe" in the log is the guest's alone
curl -fsS -I -o /dev/null "http://127.0.0.1:$PORT/boot.ipxe" || die "the fake gateway does not answer"
curl -fsS -I -o /dev/null -H "Authorization: Bearer wrong" "http://127.0.0.1:$PORT/v1/vms/$VM/script" \
    2>/dev/null && die "the fake gateway accepted a wrong token"
note "gateway: 127.0.0.1:$PORT (guest sees $GUEST_GW)"

# --- phase 1: PXE boot the migration image --------------------------------------------------------
DISK="$RUN/disk.qcow2"
rm -f "$DISK"
qemu-img create -q -f qcow2 "$DISK" 8G
CON1="$RUN/console-pxe.log"
say "phase 1: PXE boot (console: $CON1)"
T1=$SECONDS
"${QEMU[@]}" -boot n \
    -drive "file=$DISK,if=virtio,format=qcow2" \
    -netdev "$NETDEV" \
    -device "$NIC" \
    </dev/null >"$CON1" 2>&1 &
QPID=$!
PIDS+=("$QPID")
wait_for "$RUN/gateway.log" 'GET /boot.ipxe' "$T_PXE" "$QPID" || die "iPXE never fetched boot.ipxe"
note "t+$((SECONDS - T1))s iPXE fetched boot.ipxe"
wait_for "$RUN/gateway.log" 'GET /images/migration-initrd.img' "$T_PXE" "$QPID" \
    || die "iPXE never fetched the initrd"
note "t+$((SECONDS - T1))s iPXE fetched the kernel and the initrd"
wait_for "$CON1" 'FERRY-INIT: started' "$T_PXE" "$QPID" || die "the migration image's /init did not start"
note "t+$((SECONDS - T1))s /init started ($(grep -a 'FERRY-INIT: started' "$CON1" | tr -d '\r'))"
wait_for "$CON1" 'FERRY-INIT: fetched the configure script' "$T_PXE" "$QPID" \
    || die "/init did not fetch the configure script"
note "t+$((SECONDS - T1))s configure script fetched"
T1c=$SECONDS
wait_exit "$QPID" "$T_CONFIGURE" || die "phase 1 did not power off within ${T_CONFIGURE}s"
grep -aq 'FERRY-INIT: DONE' "$CON1" || die "the configure script failed: $(grep -a 'FERRY-STEP-FAILED\|FERRY-INIT: FAILED' "$CON1" | tr -d '\r')"
note "t+$((SECONDS - T1))s phase 1 powered off; configure script ran $((SECONDS - T1c))s"
grep -a '^FERRY-STEP:\|^FERRY-ISOLATION:' "$CON1" | tr -d '\r' | sed 's/^/    /' | tee -a "$SUMMARY" >&2
grep -q '"state": "configured"' "$RUN/gateway-events.jsonl" \
    || die "the gateway never got state=configured"
note "gateway events: $(wc -l <"$RUN/gateway-events.jsonl") state/message posts, last: $(tail -n1 "$RUN/gateway-events.jsonl")"
note "guest requests came from: $(awk 'NR>1 {print $2}' "$RUN/gateway.log" | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
note "disk after phase 1: $(qemu-img info "$DISK" | awk -F': ' '/disk size/ {print $2}')"

# --- phase 2: boot from the disk alone ------------------------------------------------------------
CON2="$RUN/console-disk.log"
say "phase 2: boot from disk (console: $CON2)"
T2=$SECONDS
"${QEMU[@]}" -boot c -nic none \
    -drive "file=$DISK,if=virtio,format=qcow2" \
    </dev/null >"$CON2" 2>&1 &
QPID=$!
PIDS+=("$QPID")
wait_for "$CON2" 'FERRY-GRUB: loading' 120 "$QPID" || die "GRUB did not start the kernel"
note "t+$((SECONDS - T2))s GRUB loaded the kernel"
wait_for "$CON2" 'FERRY-LAB-BOOTED' "$T_DISKBOOT" "$QPID" || die "the marker unit never ran"
note "t+$((SECONDS - T2))s $(grep -a 'FERRY-LAB-BOOTED' "$CON2" | tr -d '\r')"
wait_for "$CON2" 'login:' 300 "$QPID" || die "no login prompt on the serial console"
note "t+$((SECONDS - T2))s login prompt: $(grep -a 'login:' "$CON2" | head -n1 | tr -d '\r')"
kill "$QPID" 2>/dev/null || true
note "OK: PXE -> migration image -> configure script -> disk boot from LVM root"
