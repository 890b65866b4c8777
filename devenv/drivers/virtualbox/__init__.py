"""The VirtualBox driver (VBoxManage; tests use a stand-in that checks every argument)."""
