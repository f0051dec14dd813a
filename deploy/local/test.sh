#!/bin/bash
# Run Ferryman's tests against this machine's real PostgreSQL, RabbitMQ and MariaDB, and the
# lab's tests with real VMs through libvirt (the lab images are built first, or reused from the cache).
set -o errexit -o nounset -o pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_libvirt
ensure_venv
ensure_services
ensure_browser
if [[ $(id -u) -eq 0 ]]; then
    ensure_lab
else
    say "not root: the lab tests (real VMs) will be skipped (with CI=true: fail)"
fi
cd "$REPO"
# -rs: every skipped test is listed with its reason.
exec "$VENV/bin/pytest" -q -rs -p no:cacheprovider "$@"
