"""The libvirt driver: QEMU/KVM VMs through libvirt-python (any libvirt URI)."""
