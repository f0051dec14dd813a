#!/usr/bin/env python3
"""Relay TCP from inside a network namespace to a port on this host's loopback.

    ns-relay.py NETNS LISTEN_ADDR LISTEN_PORT TARGET_HOST TARGET_PORT

Runs in the root namespace; enters NETNS (/run/netns/NETNS) only long enough to open the
listening socket there, then goes back, so every accepted connection is relayed to
TARGET_HOST:TARGET_PORT (e.g. the gateway on 127.0.0.1) in the root namespace. This lets VMs on a
group's private bridge reach the gateway and nothing else, with no veth, route, forwarding or
firewall change in the root namespace. Needs root (setns).
"""
import ctypes
import os
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)


def setns(fd):
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass


def handle(client, target):
    try:
        upstream = socket.create_connection(target, timeout=10)
        upstream.settimeout(None)
    except OSError as e:
        sys.stderr.write("relay: cannot reach %s:%d: %s\n" % (target + (e,)))
        client.close()
        return
    t = threading.Thread(target=pump, args=(upstream, client), daemon=True)
    t.start()
    pump(client, upstream)
    t.join()
    client.close()
    upstream.close()


def main():
    netns, laddr, lport, thost, tport = sys.argv[1:6]
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    there = os.open(os.path.join("/run/netns", netns), os.O_RDONLY)
    setns(there)                      # single-threaded here: the whole process switches
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((laddr, int(lport)))
    listener.listen(64)
    setns(home)                       # back home: connections out go to the root namespace
    os.close(there)
    os.close(home)
    sys.stderr.write("relay: %s %s:%s -> %s:%s\n" % (netns, laddr, lport, thost, tport))
    sys.stderr.flush()
    target = (thost, int(tport))
    while True:
        client, _ = listener.accept()
        threading.Thread(target=handle, args=(client, target), daemon=True).start()


if __name__ == "__main__":
    main()
