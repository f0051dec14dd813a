#!/bin/sh
# Install Ferryman's systemd units, its `ferry` user and its folders.
#
#   deploy/systemd/install.sh [--root DIR] [--prefix DIR]
#
# --prefix: where Ferryman is installed (its virtualenv is PREFIX/.venv; default /opt/ferryman,
#           the path the units name). Another prefix is written into the installed units.
# --root:   install into DIR instead of / (a package build, an image, a test). Without it, a
#           running systemd is told to reload its units; nothing is enabled or started:
#           systemctl enable --now ferry@gateway ferry@archiver ... (docs/operations.md).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=/
prefix=/opt/ferryman
while [ $# -gt 0 ]; do
    case "$1" in
        --root) root=${2:?--root needs a folder}; shift 2 ;;
        --prefix) prefix=${2:?--prefix needs a folder}; shift 2 ;;
        *) echo "install.sh: unknown argument '$1' (use --root DIR, --prefix DIR)" >&2; exit 2 ;;
    esac
done
case "$prefix" in
    /*) ;;
    *) echo "install.sh: --prefix must be an absolute path, not '$prefix'" >&2; exit 2 ;;
esac
if [ ! -x "$root/$prefix/.venv/bin/python" ] && [ ! -x "$prefix/.venv/bin/python" ]; then
    echo "install.sh: no Ferryman virtualenv at $prefix/.venv (install Ferryman there first," \
         "or name its folder with --prefix)" >&2
    exit 1
fi

units="$root/etc/systemd/system"
mkdir -p "$units" "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d"
# The template and each service's drop-in, with the prefix the units start Ferryman from.
for file in "$here"/ferry@.service "$here"/ferry@*.service.d/*.conf; do
    target="$units/${file#"$here"/}"
    mkdir -p "$(dirname "$target")"
    sed "s|/opt/ferryman/|$prefix/|g" "$file" > "$target"
    chmod 0644 "$target"
done
install -m 0644 "$here/ferryman.conf" "$root/usr/lib/sysusers.d/ferryman.conf"
install -m 0644 "$here/ferryman-tmpfiles.conf" "$root/usr/lib/tmpfiles.d/ferryman.conf"

# The user, then its folders (tmpfiles needs the user to exist).
systemd-sysusers --root="$root" ferryman.conf
systemd-tmpfiles --root="$root" --create ferryman.conf

if [ "$root" = / ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
echo "installed: ferry@.service and its drop-ins in $units; the ferry user; /var/lib/ferryman"
