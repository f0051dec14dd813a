#!/bin/bash
# Run Ferryman's tests against this machine's real PostgreSQL, RabbitMQ and MariaDB.
set -o errexit -o nounset -o pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_venv
ensure_services
cd "$REPO"
exec "$VENV/bin/pytest" -q -p no:cacheprovider "$@"
