"""The Vagrant bridge: machines a Vagrantfile describes, driven through python-vagrant."""
