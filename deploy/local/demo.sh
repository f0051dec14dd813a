#!/bin/bash
# The demo migration: sets up, makes sure PostgreSQL, RabbitMQ and MariaDB run, starts every
# service as its own process and takes the example group to ready.
set -o errexit -o nounset -o pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_venv
ensure_services
cd "$REPO"
exec "$VENV/bin/ferry" demo "$@"
