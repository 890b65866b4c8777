"""Boxes: the images machines boot, as one subsystem.

    builders/    building a box from its recipe (the use case, ensure_built for `up`, one
                 builder per output: docker, libvirt, vagrant); the only place steps are baked
    store        the box store on disk (NAME/VERSION/PROVIDER), written atomically
    inventory    every built box on this host (store + engine images): list, remove, prune
    vagrantbox   Vagrant .box files and catalogs (add, write); archive: their checked extraction
    rootfs       root file systems from debootstrap or busybox; biosdisk: BIOS-bootable disks
    diskcheck    disks from outside, checked before QEMU or qemu-img read them
    disks        which machines' disks are built on a stored box (qcow2 backing files)
    lockfile     Devfile.lock

Recipes and box references are the model's (devenv.model.recipe). Nothing here prints.
"""
