"""The lab: what runs Ferryman's whole journey on this machine with real VMs through libvirt.

`lab.images` builds (and caches) the boot images, `lab.legacy` runs the example legacy fleet
in network namespaces, `lab.checks` looks at the rebuilt VMs themselves. The `libvirt` provider
itself is product code and lives in `shared/providers/`.
"""
