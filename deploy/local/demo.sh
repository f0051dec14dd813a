#!/bin/bash
# The demo migration: sets up, makes sure PostgreSQL, RabbitMQ and MariaDB run, builds the lab
# images (cached), starts every service as its own process and takes the example group to
# ready on real VMs through libvirt (`--provider sim` for simulated VMs).
set -o errexit -o nounset -o pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_libvirt
ensure_venv
ensure_services
case " $* " in
    *" --provider sim "* | *" --provider=sim "*) ;;
    *) ensure_lab ;;
esac
cd "$REPO"
exec "$VENV/bin/ferry" demo "$@"
