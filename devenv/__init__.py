"""devenv: local development environments from a Devfile — containers and VMs, one tool."""

__version__ = "0.1.0"
