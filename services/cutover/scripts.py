"""The shell scripts the runbook runs on the legacy hosts (steps.py): the maintenance page and
the forwarding of the old public addresses. Each is safe to run again."""

from __future__ import annotations

# nginx: the site's enabled configuration is set aside (kept whole, so turning the page off is
# a rename back) and one server answers every request with 503 and a Retry-After.
MAINTENANCE_ON = r"""
cd /etc/nginx
if [ ! -d sites-enabled.ferry-live ]; then
    mv sites-enabled sites-enabled.ferry-live
    mkdir sites-enabled
fi
mkdir -p /var/www/ferry-maintenance
cat > /var/www/ferry-maintenance/index.html <<'PAGE'
<!doctype html><title>Back soon</title><h1>Down for maintenance</h1>
<p>We are moving to new servers and will be back in a few minutes.</p>
PAGE
cat > sites-enabled/ferry-maintenance <<'CONF'
server {
    listen 80 default_server;
    server_name _;
    root /var/www/ferry-maintenance;
    add_header Retry-After 60 always;
    error_page 503 /index.html;
    location = /index.html { internal; }
    location / { return 503; }
}
CONF
nginx -t -q
nginx -s reload
"""

MAINTENANCE_OFF = r"""
cd /etc/nginx
if [ -d sites-enabled.ferry-live ]; then
    rm -rf sites-enabled
    mv sites-enabled.ferry-live sites-enabled
    nginx -t -q
    nginx -s reload
fi
"""

# DNAT on the legacy host: whatever arrives for its old public address goes to the new VM, and
# leaves with the legacy host's own address (MASQUERADE), so the answers come back through it.
# Own chains, so the undo removes exactly what this added.
UNFORWARD = r"""
iptables -t nat -D PREROUTING -j FERRY-FORWARD 2>/dev/null || true
iptables -t nat -D POSTROUTING -j FERRY-FORWARD-SNAT 2>/dev/null || true
for chain in FERRY-FORWARD FERRY-FORWARD-SNAT; do
    iptables -t nat -F "$chain" 2>/dev/null || true
    iptables -t nat -X "$chain" 2>/dev/null || true
done
"""


def forward_script(old: str, new: str) -> str:
    return UNFORWARD + f"""
sysctl -qw net.ipv4.ip_forward=1
iptables -t nat -N FERRY-FORWARD
iptables -t nat -N FERRY-FORWARD-SNAT
iptables -t nat -A FERRY-FORWARD -d {old} -j DNAT --to-destination {new}
iptables -t nat -A FERRY-FORWARD-SNAT -d {new} -j MASQUERADE
iptables -t nat -A PREROUTING -j FERRY-FORWARD
iptables -t nat -A POSTROUTING -j FERRY-FORWARD-SNAT
"""
