"""Join stdin/stdout to a TCP port: python -m shared.providers.guestfwd HOST PORT.

QEMU's user network runs this once per guest connection of a `guestfwd=...-cmd:` rule, with the
connection on stdin and stdout: it is how an isolated (restrict=on) migration VM reaches the
gateway at 10.0.2.100:80. Stdlib only, and shared.providers imports nothing heavy, so it starts
in a few tens of milliseconds.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys


def pipe(host: str, port: int) -> None:
    sock = socket.create_connection((host, port), timeout=10)
    sock.settimeout(None)
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ, "in")
    sel.register(sock, selectors.EVENT_READ, "sock")
    while sel.get_map():
        for key, _ in sel.select():
            if key.data == "in":
                data = os.read(0, 65536)
                if data:
                    sock.sendall(data)
                else:  # the guest closed its side: pass the half-close on, keep reading
                    sel.unregister(0)
                    sock.shutdown(socket.SHUT_WR)
            else:
                data = sock.recv(65536)
                if not data:
                    return
                view = memoryview(data)
                while view:
                    view = view[os.write(1, view):]


def main() -> None:
    try:
        pipe(sys.argv[1], int(sys.argv[2]))
    except (BrokenPipeError, ConnectionResetError):
        pass
    except OSError as exc:  # the gateway is down: the guest sees the connection close
        sys.stderr.write(f"guestfwd: {exc}\n")


if __name__ == "__main__":
    main()
