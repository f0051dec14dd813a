# Shared by the local scripts: the virtualenv and the services this machine runs.
# shellcheck shell=bash

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${FERRY_VENV:-$REPO/.venv}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

ensure_venv() {
    local stamp="$VENV/.ferry-installed"
    if [[ ! -x "$VENV/bin/python" ]]; then
        say "creating the virtualenv in $VENV"
        python3 -m venv "$VENV"
    fi
    # Reinstall only when the dependency list changed.
    local want=test
    pkg-config --exists libvirt 2>/dev/null && want=test,libvirt
    if [[ ! -f "$stamp" || "$REPO/pyproject.toml" -nt "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
        say "installing Ferryman and its pinned dependencies (log: $VENV/install.log)"
        # libvirt-python compiles against libvirt-dev (ensure_libvirt installs it).
        local extras=$want
        if ! { "$VENV/bin/pip" install --upgrade pip &&
               "$VENV/bin/pip" install -e "${REPO}[$extras]"; } >"$VENV/install.log" 2>&1; then
            tail -n 30 "$VENV/install.log" >&2
            say "installing the dependencies failed"; return 1
        fi
        echo "$want" >"$stamp"
    fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 what=$2 tries=120
    until port_open "$port"; do
        tries=$((tries - 1))
        if ((tries == 0)); then
            say "$what did not open port $port"; return 1
        fi
        sleep 0.5
    done
}

ensure_postgres() {
    port_open 5432 && return 0
    say "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
    wait_port 5432 PostgreSQL
}

ensure_rabbitmq() {
    port_open 5672 && return 0
    say "starting RabbitMQ"
    rabbitmq-server -detached
    rabbitmqctl await_startup >/dev/null
    wait_port 5672 RabbitMQ
}

ensure_mariadb() {
    port_open 3306 && return 0
    say "starting MariaDB"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    wait_port 3306 MariaDB
}

ensure_services() {
    ensure_postgres
    ensure_rabbitmq
    ensure_mariadb
    ensure_archiver_tools
    ensure_systemd_tools
}

# The archiver's tools beyond Debian's base: pv caps each archive stream's bandwidth
# (FERRY_ARCHIVE_BANDWIDTH_BYTES_S, docs/operations.md "Limits").
ensure_archiver_tools() {
    command -v pv >/dev/null && return 0
    if [[ $(id -u) -ne 0 ]]; then
        say "pv is missing and installing it needs root: a bandwidth cap on archives would fail"
        return 0
    fi
    say "installing pv from Debian (log: /tmp/ferry-pv.log)"
    if ! apt_no_services pv >/tmp/ferry-pv.log 2>&1; then
        tail -n 30 /tmp/ferry-pv.log >&2
        say "installing pv failed"; return 1
    fi
}

# The units' test (tests/unit/test_systemd_units.py) runs systemd-analyze, systemd-sysusers and
# systemd-tmpfiles on deploy/systemd. Debian's systemd package brings them; with no systemd as
# PID 1 here, installing it starts nothing.
ensure_systemd_tools() {
    command -v systemd-analyze >/dev/null && return 0
    if [[ $(id -u) -ne 0 ]]; then
        say "systemd-analyze is missing and installing it needs root: the units' test will be skipped"
        return 0
    fi
    say "installing systemd's tools from Debian (log: /tmp/ferry-systemd.log)"
    if ! apt_no_services systemd >/tmp/ferry-systemd.log 2>&1; then
        tail -n 30 /tmp/ferry-systemd.log >&2
        say "installing systemd's tools failed"; return 1
    fi
}

# The web UI's browser test drives Debian's chromium (Playwright never downloads a browser).
ensure_browser() {
    command -v chromium >/dev/null 2>&1 && return 0
    if [[ $(id -u) -ne 0 ]]; then
        say "chromium is missing and installing it needs root: the web UI test will be skipped"
        return 0
    fi
    say "installing chromium from Debian (log: /tmp/ferry-chromium.log)"
    if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; } \
            >/tmp/ferry-chromium.log 2>&1; then
        tail -n 30 /tmp/ferry-chromium.log >&2
        say "installing chromium failed: the web UI test will be skipped"
    fi
}

# The lab (real VMs through libvirt, legacy hosts in network namespaces) needs root, QEMU
# and the images: build-images.sh installs the host packages it lacks and builds the images
# (cached; about a second when nothing changed).
ensure_lab() {
    if [[ $(id -u) -ne 0 ]]; then
        say "the lab needs root (network namespaces, taps, chroots)"; return 1
    fi
    say "lab: host packages and images (log: /tmp/ferry-lab-build.log)"
    if ! "$REPO/deploy/lab/build-images.sh" >/tmp/ferry-lab-build.log 2>&1; then
        tail -n 30 /tmp/ferry-lab-build.log >&2
        say "preparing the lab failed"; return 1
    fi
}

# Install Debian packages without starting their services (there is no systemd here; the
# project starts what it needs itself).
apt_no_services() {
    local guard=/usr/sbin/policy-rc.d made=0
    if [[ ! -e $guard ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$guard"; chmod +x "$guard"; made=1
    fi
    local rc=0
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"; } || rc=$?
    ((made)) && rm -f "$guard"
    return $rc
}

# The libvirt destination: libvirtd and virtlogd from Debian, started by hand (no systemd), and
# the headers libvirt-python compiles against. openssh-server serves the qemu+ssh:// tests.
ensure_libvirt() {
    if [[ $(id -u) -ne 0 ]]; then
        say "libvirt needs root here: the libvirt tests will be skipped (with CI=true: fail)"
        return 0
    fi
    local need=()
    command -v libvirtd >/dev/null || need+=(libvirt-daemon-system libvirt-clients)
    command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86 qemu-utils)
    command -v dnsmasq >/dev/null || [[ -x /usr/sbin/dnsmasq ]] || need+=(dnsmasq-base)
    pkg-config --exists libvirt 2>/dev/null || need+=(libvirt-dev pkg-config)
    [[ -x /usr/sbin/sshd ]] || need+=(openssh-server)
    command -v ebtables >/dev/null || need+=(ebtables)
    if ((${#need[@]})); then
        say "installing ${need[*]} from Debian (log: /tmp/ferry-libvirt.log)"
        if ! apt_no_services "${need[@]}" >/tmp/ferry-libvirt.log 2>&1; then
            tail -n 30 /tmp/ferry-libvirt.log >&2
            say "installing libvirt failed"; return 1
        fi
    fi
    pgrep -x virtlogd >/dev/null || virtlogd -d
    if ! pgrep -x libvirtd >/dev/null; then
        say "starting libvirtd"
        libvirtd -d
    fi
    local tries=60
    until virsh -c qemu:///system version >/dev/null 2>&1; do
        tries=$((tries - 1))
        if ((tries == 0)); then say "libvirtd does not answer on qemu:///system"; return 1; fi
        sleep 0.5
    done
}
