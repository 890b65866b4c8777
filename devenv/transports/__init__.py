"""Transports: run commands and copy files inside a running machine (devenv.contract.Transport).

docker: exec + the archive API of the engine (works against remote engines too); ssh: OpenSSH
with the machine's pinned host key; env: adds a machine's environment to every command; files:
the checked tar streams both copy with.
"""
