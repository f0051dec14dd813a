"""The cutover's steps by name, in order: what the operator API validates a rehearsal against
and the UI shows, without loading the runbook itself."""

# `ferry cutover GROUP --prepare`: ahead of the window, nothing visitors notice.
# (replicate-from-legacy: mode replication's link, the new master a replica of the old.)
PREPARE_STEPS = ("lower-dns-ttl", "rsync-before-window", "replicate-from-legacy")

# The cutover itself. The window (downtime) opens with the maintenance page and closes when DNS
# points at the new VMs; what follows keeps the site up while the rest moves.
WINDOW_STEPS = (
    "lower-dns-ttl",
    "rsync-before-window",
    "replicate-from-legacy",
    "maintenance-page",
    "rsync-in-window",
    "database",
    "start-application",
    "http-checks",
    "switch-dns",
    "forward-old-addresses",
    "remove-migrating-marker",
    "config-management",
    "lift-outbound-block",
)

DATABASE_MODES = ("dump-and-restore", "replication")
