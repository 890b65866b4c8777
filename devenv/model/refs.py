"""How a box registry is written (`oci://HOST[:PORT]/REPO`): one pattern for the Devfile's
`[project] box_registry`, a recipe's registry source and devenv.boxes.oci's references."""

from __future__ import annotations

# HOST: a DNS name or address, [IPv6] in brackets, an optional port; REPO: the OCI distribution
# spec's path components (lowercase, separators . _ - inside, / between).
REGISTRY_REPO = (
    r"oci://(?P<host>[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?)"
    r"/(?P<repo>[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*)"
)
