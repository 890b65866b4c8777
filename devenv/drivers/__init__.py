"""The built-in drivers: Docker, libvirt, VirtualBox and Vagrant.

What a driver must offer is devenv.contract; how one is found by name (built-in or a plugin's,
from the ``devenv.drivers`` entry point group) is devenv.plugins. Driver modules import their
engine library lazily, so importing a driver (to validate its Devfile table) costs nothing at
CLI start-up.
"""
