#!/usr/bin/env bash
# Spike: a private network for a group of VMs that reaches the gateway and nothing else, with no
# change to the root network namespace (see docs/lab-notes.md, "Group networks").
#
#   netns ferry-lab-<pid>          made here, deleted at the end (takes br0 and the taps with it)
#     br0 10.77.0.1/24             the group's L2 segment; no uplink, no default route
#     tap-a, tap-b                 one per VM; QEMU runs inside the netns and opens them
#     dnsmasq on br0               DHCP only (port=0: no DNS), fixed lease and iPXE boot URL per MAC
#     ns-relay.py 10.77.0.1:80     listens inside the netns, connects to the gateway on the root
#                                  namespace's 127.0.0.1 (the process straddles both namespaces)
#
# Two VMs PXE-boot the migration image on br0, get their script from the fake gateway through
# the relay, ping each other, and report what they see (addresses, routes) to the gateway.
# Needs root, iproute2, dnsmasq-base, qemu-system-x86; images from build-images.sh.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUN="${FERRY_LAB_RUN:-$(mktemp -d /tmp/ferry-lab-group.XXXXXX)}"
mkdir -p "$RUN"
NS="ferry-lab-$$"
ACCEL="${FERRY_QEMU_ACCEL:-tcg}"
TIMEOUT="${FERRY_T_GROUP:-600}"
SUMMARY="$RUN/summary.txt"
: >"$SUMMARY"

say() { printf '==> %s\n' "$*" >&2; }
note() { printf '%s\n' "$*" | tee -a "$SUMMARY" >&2; }
die() { note "FAIL: $*"; exit 1; }
[[ $(id -u) -eq 0 ]] || die "run as root (ip netns, tap)"
command -v dnsmasq >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y \
    --no-install-recommends dnsmasq-base >/dev/null

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 1
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

IMAGES="${FERRY_LAB_IMAGES:-$("$HERE/build-images.sh" | tail -n1)}"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
GWIP=10.77.0.1
declare -A MAC=([vm-a]=52:54:00:77:00:0a [vm-b]=52:54:00:77:00:0b)
declare -A IP=([vm-a]=10.77.0.10 [vm-b]=10.77.0.11)
declare -A PEER=([vm-a]=vm-b [vm-b]=vm-a)

# --- the namespace --------------------------------------------------------------------------------
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add br0 type bridge
ip -n "$NS" addr add "$GWIP/24" dev br0
ip -n "$NS" link set br0 up
for vm in vm-a vm-b; do
    ip -n "$NS" tuntap add dev "tap-${vm#vm-}" mode tap
    ip -n "$NS" link set "tap-${vm#vm-}" master br0 up
done
note "netns $NS: $(ip -n "$NS" -br addr | tr -s ' ' | tr '\n' ';')"
note "routes in $NS: $(ip -n "$NS" route | tr '\n' ';')"

# --- fake gateway (root namespace, loopback) and the relay into the netns -------------------------
GW="$RUN/gateway"
rm -rf "$GW"; mkdir -p "$GW/images" "$GW/boot"
ln -s "$IMAGES/migration-vmlinuz" "$GW/images/"
ln -s "$IMAGES/migration-initrd.img" "$GW/images/"
for vm in vm-a vm-b; do
    mkdir -p "$GW/vms/$vm"
    token="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    echo "$token" >"$GW/vms/$vm/token"
    cat >"$GW/boot/$vm.ipxe" <<EOF
#!ipxe
echo FERRY-IPXE: boot script for $vm
kernel http://$GWIP/images/migration-vmlinuz console=ttyS0,115200 panic=10 ferry.gateway=http://$GWIP ferry.vm=$vm ferry.token=$token
initrd http://$GWIP/images/migration-initrd.img
boot
EOF
    cat >"$GW/vms/$vm/script" <<EOF
#!/bin/bash
# group-net-probe: report the network, then ping the peer until it answers
set -uo pipefail
peer_ip=${IP[${PEER[$vm]}]}
post() { curl -fsS -X POST -H "Authorization: Bearer \$FERRY_TOKEN" -H 'Content-Type: application/json' \\
    --data-binary "\$2" "\$FERRY_GATEWAY/v1/vms/\$FERRY_VM_ID/\$1" >/dev/null; }
addr="\$(ip -4 -o addr show dev eth0 | awk '{print \$4}')"
routes="\$(ip route | tr '\n' ';')"
echo "FERRY-GROUP: \$FERRY_VM_ID addr=\$addr routes=\$routes"
post messages "{\"level\":\"info\",\"text\":\"addr=\$addr routes=\$routes\"}"
ok=0
for i in \$(seq 60); do
    if ping -c 1 -W 1 "\$peer_ip" >/dev/null 2>&1; then ok=1; break; fi
    sleep 1
done
if [ \$ok = 1 ]; then
    rtt="\$(ping -c 3 -W 1 "\$peer_ip" | tail -n1)"
    echo "FERRY-GROUP: \$FERRY_VM_ID reached \$peer_ip: \$rtt"
    post messages "{\"level\":\"info\",\"text\":\"ping \$peer_ip ok\"}"
else
    echo "FERRY-GROUP: \$FERRY_VM_ID could not reach \$peer_ip"
    post messages "{\"level\":\"error\",\"text\":\"ping \$peer_ip failed\"}"
    exit 1
fi
# keep answering pings a little longer, so the peer can finish too
sleep 20
post state '{"state":"configured","step":"group-net"}'
EOF
done

python3 "$HERE/fake-gateway.py" --port "$PORT" --root "$GW" --events "$RUN/gateway-events.jsonl" \
    >"$RUN/gateway.log" 2>&1 &
PIDS+=("$!")
python3 "$HERE/ns-relay.py" "$NS" "$GWIP" 80 127.0.0.1 "$PORT" >"$RUN/relay.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 50); do grep -q 'relay:' "$RUN/relay.log" 2>/dev/null && break; sleep 0.2; done
ip netns exec "$NS" curl -fsS -I -o /dev/null "http://$GWIP/v1/boot/vm-a" \
    || die "the relay does not reach the gateway from inside $NS"
note "relay: $GWIP:80 in $NS -> 127.0.0.1:$PORT"

# --- DHCP on br0: a fixed address and a per-VM boot URL for each MAC ------------------------------
# shellcheck disable=SC2054  # dnsmasq wants the commas
DHCP=(--no-daemon --conf-file=/dev/null --port=0 --interface=br0 --bind-interfaces
    --dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h --dhcp-option=3 --dhcp-option=6
    --dhcp-leasefile="$RUN/dnsmasq.leases" --log-dhcp)
for vm in vm-a vm-b; do
    DHCP+=("--dhcp-host=${MAC[$vm]},set:$vm,${IP[$vm]}" "--dhcp-boot=tag:$vm,http://$GWIP/v1/boot/$vm")
done
ip netns exec "$NS" dnsmasq "${DHCP[@]}" >"$RUN/dnsmasq.log" 2>&1 &
PIDS+=("$!")

# --- the two VMs ----------------------------------------------------------------------------------
T0=$SECONDS
declare -A QPID
for vm in vm-a vm-b; do
    qemu-img create -q -f qcow2 "$RUN/$vm.qcow2" 2G
    ip netns exec "$NS" qemu-system-x86_64 -accel "$ACCEL" -m 512 -smp 1 -nographic -no-reboot \
        -boot n -drive "file=$RUN/$vm.qcow2,if=virtio,format=qcow2" \
        -netdev "tap,id=n0,ifname=tap-${vm#vm-},script=no,downscript=no" \
        -device "virtio-net-pci,netdev=n0,mac=${MAC[$vm]}" \
        </dev/null >"$RUN/console-$vm.log" 2>&1 &
    QPID[$vm]=$!
    PIDS+=("$!")
done
for vm in vm-a vm-b; do
    start=$SECONDS
    while kill -0 "${QPID[$vm]}" 2>/dev/null; do
        ((SECONDS - start < TIMEOUT)) || die "$vm did not finish within ${TIMEOUT}s"
        sleep 2
    done
done
note "both VMs powered off after $((SECONDS - T0))s"
for vm in vm-a vm-b; do
    grep -a 'FERRY-GROUP:\|FERRY-INIT: \(DONE\|FAILED\|network\)' "$RUN/console-$vm.log" \
        | tr -d '\r' | sed 's/^/    /' | tee -a "$SUMMARY" >&2
    grep -aq "FERRY-GROUP: $vm reached" "$RUN/console-$vm.log" || die "$vm did not reach its peer"
done
note "dnsmasq: $(grep -c 'DHCPACK' "$RUN/dnsmasq.log") DHCPACKs"
note "gateway saw clients: $(awk 'NR>1 {print $2}' "$RUN/gateway.log" | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
note "OK: two VMs on a private bridge in $NS reached each other and the gateway"
