#!/usr/bin/env python3
"""A stand-in for Ferryman's gateway in the lab's boot probe (stdlib only, not the real gateway).

Serves, from --root:
  GET  /v1/boot/{vm}                    boot/{vm}.ipxe, else boot.ipxe (no token: iPXE has none)
  GET  /boot.ipxe                       boot.ipxe
  GET  /images/{name}                   images/{name}                  (kernel, initrd; no token)
  GET  /v1/vms/{vm}/script              vms/{vm}/script                (the VM's bearer token)
  GET  /v1/archives/{name}              archives/{name}                (the VM's bearer token)
  POST /v1/vms/{vm}/state, /messages    appended as JSON lines to --events
A VM's token is the content of vms/{vm}/token. Every request is logged to stderr with the
client's address, which is how the probe shows where QEMU's user network delivers 10.0.2.2.
"""
import argparse
import hmac
import json
import os
import re
import shutil
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VM_RE = re.compile(r"^/v1/vms/([A-Za-z0-9._-]+)/(script|state|messages)$")
NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")


class Handler(BaseHTTPRequestHandler):
    server_version = "ferry-lab-gateway/0"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s %s\n" % (time.strftime("%H:%M:%S"), self.client_address[0],
                                         fmt % args))
        sys.stderr.flush()

    # --- helpers ---
    def _send(self, code, body=b"", ctype="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_file(self, path):
        if not os.path.isfile(path):
            return self._send(404, b"not found\n")
        size = os.path.getsize(path)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command != "HEAD":
            with open(path, "rb") as f:
                shutil.copyfileobj(f, self.wfile, 1 << 20)

    def _authorized(self, vm):
        try:
            with open(os.path.join(self.server.root, "vms", vm, "token")) as f:
                token = f.read().strip()
        except OSError:
            return False
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), ("Bearer " + token).encode())

    def _vm_of_token(self):
        vms = os.path.join(self.server.root, "vms")
        for vm in sorted(os.listdir(vms)) if os.path.isdir(vms) else []:
            if self._authorized(vm):
                return vm
        return None

    # --- verbs ---
    def do_GET(self):
        path = self.path.split("?", 1)[0]
        root = self.server.root
        m = re.match(r"^/v1/boot/([A-Za-z0-9._-]+)$", path)
        if m and os.path.isfile(os.path.join(root, "boot", m.group(1) + ".ipxe")):
            return self._send_file(os.path.join(root, "boot", m.group(1) + ".ipxe"))
        if path == "/boot.ipxe" or m:
            return self._send_file(os.path.join(root, "boot.ipxe"))
        m = re.match(r"^/images/([^/]+)$", path)
        if m and NAME_RE.match(m.group(1)):
            return self._send_file(os.path.join(root, "images", m.group(1)))
        m = VM_RE.match(path)
        if m and m.group(2) == "script":
            if not self._authorized(m.group(1)):
                return self._send(401, b"bad token\n")
            return self._send_file(os.path.join(root, "vms", m.group(1), "script"))
        m = re.match(r"^/v1/archives/([^/]+)$", path)
        if m and NAME_RE.match(m.group(1)):
            if self._vm_of_token() is None:
                return self._send(401, b"bad token\n")
            return self._send_file(os.path.join(root, "archives", m.group(1)))
        return self._send(404, b"not found\n")

    do_HEAD = do_GET

    def do_POST(self):
        m = VM_RE.match(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if not m or m.group(2) == "script":
            return self._send(404, b"not found\n")
        if not self._authorized(m.group(1)):
            return self._send(401, b"bad token\n")
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return self._send(400, b"bad json\n")
        record = {"t": time.time(), "vm": m.group(1), "kind": m.group(2), "data": data}
        with self.server.lock, open(self.server.events, "a") as f:
            f.write(json.dumps(record) + "\n")
        return self._send(204)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--root", required=True)
    ap.add_argument("--events", required=True)
    args = ap.parse_args()
    srv = ThreadingHTTPServer((args.bind, args.port), Handler)
    srv.daemon_threads = True
    srv.root = os.path.abspath(args.root)
    srv.events = args.events
    srv.lock = threading.Lock()
    sys.stderr.write("fake gateway on %s:%d serving %s\n" % (args.bind, args.port, srv.root))
    sys.stderr.flush()
    srv.serve_forever()


if __name__ == "__main__":
    main()
