#!/bin/sh
# Packages every machine needs.
set -e
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
