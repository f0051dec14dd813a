#!/bin/sh
# /init of the Ferryman migration image (busybox sh, PID 1). Built into migration-initrd.img by
# deploy/lab/build-images.sh.
#
# Kernel command line:
#   ferry.gateway=URL   the gateway's base URL (e.g. https://10.215.0.1:8470)
#   ferry.vm=ID         this VM's id
#   ferry.token=TOKEN   this VM's bearer token; without it (the libvirt provider's boot chain,
#                       which carries no token), the VM's SMBIOS serial, where the provider put it
#
# /etc/ferry/ca.pem, when the boot chain brings it (an extra initrd from the gateway's boot
# listener), is the one CA curl trusts (FERRY_CA): the gateway's certificate must chain to it.
#   ferry.iface=NAME    the interface to configure (default: the first one that gets a lease)
#   ferry.debug=1       on failure, start a shell on the console instead of powering off
#
# Fetches $FERRY_GATEWAY/v1/vms/$FERRY_VM_ID/script into /tmp/configure.sh, runs it with bash
# and powers off whatever happens. Console lines starting with "FERRY-INIT:" are for the lab's
# log watchers.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
umask 022

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mount -t tmpfs tmpfs /dev
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/lock /run/lvm
ln -sf /proc/self/fd /dev/fd 2>/dev/null
ln -sf /proc/self/fd/0 /dev/stdin; ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
echo 0 >/proc/sys/kernel/printk 2>/dev/null || true   # keep kernel chatter off the console

log() { echo "FERRY-INIT: $*"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

FERRY_DEBUG=0
finish() {   # finish RC MESSAGE
    sync
    if [ "$1" -ne 0 ]; then
        log "FAILED rc=$1: $2"
        if [ "$FERRY_DEBUG" = 1 ]; then
            log "ferry.debug=1: starting a shell; 'poweroff -f' to stop"
            setsid cttyhack sh
        fi
    else
        log "DONE: $2"
    fi
    log "powering off at $(uptime_s)s"
    poweroff -f
    sleep 10   # poweroff -f does not return; never let PID 1 exit
}

log "started at $(uptime_s)s, kernel $(uname -r)"

# --- arguments ---------------------------------------------------------------------------------
FERRY_GATEWAY='' FERRY_VM_ID='' FERRY_TOKEN='' FERRY_IFACE=''
# shellcheck disable=SC2013  # words, not lines
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        ferry.gateway=*) FERRY_GATEWAY="${arg#ferry.gateway=}" ;;
        ferry.vm=*) FERRY_VM_ID="${arg#ferry.vm=}" ;;
        ferry.token=*) FERRY_TOKEN="${arg#ferry.token=}" ;;
        ferry.iface=*) FERRY_IFACE="${arg#ferry.iface=}" ;;
        ferry.debug=*) FERRY_DEBUG="${arg#ferry.debug=}" ;;
    esac
done
if [ -z "$FERRY_TOKEN" ] && [ -r /sys/class/dmi/id/product_serial ]; then
    FERRY_TOKEN=$(cat /sys/class/dmi/id/product_serial)
fi
FERRY_CA=''
[ -s /etc/ferry/ca.pem ] && FERRY_CA=/etc/ferry/ca.pem
export FERRY_GATEWAY FERRY_VM_ID FERRY_TOKEN FERRY_CA
[ -n "$FERRY_GATEWAY" ] || finish 2 "no ferry.gateway= on the kernel command line"
[ -n "$FERRY_VM_ID" ] || finish 2 "no ferry.vm= on the kernel command line"
[ -n "$FERRY_TOKEN" ] || finish 2 "no ferry.token= on the kernel command line nor an SMBIOS serial"
case "$FERRY_GATEWAY" in
    https://*) [ -n "$FERRY_CA" ] || finish 2 "the gateway is HTTPS but the boot chain brought no CA (/etc/ferry/ca.pem)" ;;
esac
log "gateway=$FERRY_GATEWAY vm=$FERRY_VM_ID ca=${FERRY_CA:-none}"   # never the token

# --- modules -----------------------------------------------------------------------------------
while read -r m; do
    [ -n "$m" ] && modprobe -q "$m" 2>/dev/null
done </etc/ferry-modules

# --- network -----------------------------------------------------------------------------------
ip link set lo up
if [ -z "$FERRY_IFACE" ]; then
    n=0
    while [ $n -lt 50 ]; do   # up to 10 s for a NIC to appear
        for i in /sys/class/net/*; do
            i="${i##*/}"
            [ "$i" = lo ] && continue
            FERRY_IFACE="$i"; break
        done
        [ -n "$FERRY_IFACE" ] && break
        n=$((n + 1)); sleep 0.2
    done
fi
[ -n "$FERRY_IFACE" ] || finish 3 "no network interface"
ip link set "$FERRY_IFACE" up
# -n: fail if no lease, -q: quit once leased, -t/-T: 15 tries 2 s apart
if ! udhcpc -i "$FERRY_IFACE" -s /etc/udhcpc/default.script -n -q -t 15 -T 2 >/tmp/udhcpc.log 2>&1
then
    cat /tmp/udhcpc.log
    finish 3 "no DHCP lease on $FERRY_IFACE"
fi
log "network up on $FERRY_IFACE: $(ip -4 -o addr show dev "$FERRY_IFACE" | awk '{print $4}') at $(uptime_s)s"

# --- the configure script ----------------------------------------------------------------------
# The token and the CA in a config file (curl -K), never in curl's arguments (a process list).
url="$FERRY_GATEWAY/v1/vms/$FERRY_VM_ID/script"
mkdir -p /run/ferry && chmod 0700 /run/ferry
{
    echo "header = \"Authorization: Bearer $FERRY_TOKEN\""
    [ -n "$FERRY_CA" ] && echo "cacert = \"$FERRY_CA\""
} >/run/ferry/curl.conf
if ! curl -fsS --retry 30 --retry-all-errors --retry-delay 2 --connect-timeout 5 \
    -K /run/ferry/curl.conf -o /tmp/configure.sh "$url"; then
    finish 4 "could not fetch $url"
fi
log "fetched the configure script ($(wc -c </tmp/configure.sh) bytes) at $(uptime_s)s"
cd /tmp || finish 5 "no /tmp"
bash /tmp/configure.sh
rc=$?
cd / || true
if [ $rc -ne 0 ]; then
    finish $rc "the configure script failed"
fi
finish 0 "the configure script succeeded at $(uptime_s)s"
