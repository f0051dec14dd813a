#!/usr/bin/env python3
"""Join stdin/stdout to a TCP port: pipe-to-port.py HOST PORT.

QEMU's user network runs it for each guest connection of a `guestfwd=...-cmd:` rule, with the
connection on stdin and stdout; the boot probe uses it to reach the fake gateway from a guest
isolated with restrict=on.
"""
import os
import selectors
import socket
import sys


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    sock = socket.create_connection((host, port), timeout=10)
    sock.settimeout(None)
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ, "in")
    sel.register(sock, selectors.EVENT_READ, "sock")
    open_in = True
    while True:
        for key, _ in sel.select():
            if key.data == "in":
                data = os.read(0, 65536)
                if not data:
                    sel.unregister(0)
                    open_in = False
                    sock.shutdown(socket.SHUT_WR)
                else:
                    sock.sendall(data)
            else:
                data = sock.recv(65536)
                if not data:
                    return
                view = memoryview(data)
                while view:
                    n = os.write(1, view)
                    view = view[n:]
        if not open_in and not sel.get_map():
            return


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, ConnectionResetError):
        pass
