"""Relay TCP from inside a network namespace to a port in the root namespace.

    python -m shared.providers.nsrelay NETNS LISTEN_ADDR LISTEN_PORT TARGET_HOST TARGET_PORT

Enters NETNS (/run/netns/NETNS) only to open the listening socket, then goes back, so every
accepted connection is relayed to TARGET_HOST:TARGET_PORT (the gateway on 127.0.0.1) from the
root namespace. VMs on a group's bridge thereby reach the gateway and nothing else, with no veth,
route or firewall rule in the root namespace. Needs root (setns). Stdlib only.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000
READY = "relay: listening"  # the provider waits for this line in the relay's log


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def listen_in(netns: str, addr: str, port: int) -> socket.socket:
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    there = os.open(os.path.join("/run/netns", netns), os.O_RDONLY)
    try:
        _setns(there)  # no other thread exists yet: the whole process switches
        try:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((addr, port))
            listener.listen(64)
        finally:
            _setns(home)  # sockets keep the namespace they were made in
    finally:
        os.close(there)
        os.close(home)
    return listener


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                sock.shutdown(how)
            except OSError:
                pass


def _handle(client: socket.socket, target: tuple[str, int]) -> None:
    try:
        upstream = socket.create_connection(target, timeout=10)
    except OSError as exc:
        sys.stderr.write(f"relay: cannot reach {target[0]}:{target[1]}: {exc}\n")
        client.close()
        return
    upstream.settimeout(None)
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def main() -> None:
    netns, laddr, lport, thost, tport = sys.argv[1:6]
    listener = listen_in(netns, laddr, int(lport))
    sys.stderr.write(f"{READY} in {netns} on {laddr}:{lport} -> {thost}:{tport}\n")
    sys.stderr.flush()
    target = (thost, int(tport))
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_handle, args=(client, target), daemon=True).start()


if __name__ == "__main__":
    main()
