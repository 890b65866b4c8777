"""devenv: local development environments from a Devfile — containers and VMs, one tool."""

import gc

__version__ = "0.1.0"

# A command spends most of its start importing modules, which allocates many objects the cyclic
# collector keeps scanning (~10 ms of a 100 ms `devenv status`). The CLI collects nothing while
# it starts and freezes what it imported once it runs a command (cli.handle_errors).
gc.disable()
