"""devenv-testplugin: a driver (hostdir) and a provisioner (stamp) from outside devenv."""
