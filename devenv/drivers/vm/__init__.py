"""What the VM drivers share: the cloud-init seed, per-machine SSH keys and pinned host keys, VM metadata."""
