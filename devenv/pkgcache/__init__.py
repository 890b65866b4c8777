"""The package cache every machine on this host shares: Debian's apt-cacher-ng, run by devenv.

``proxy`` starts, stops, measures and prunes the caching proxy (on 127.0.0.1 and the Docker
bridge's address only); ``guest`` is what a machine gets while devenv provisions it (an apt
proxy detector that falls back to the mirror) and loses again before it could become a box.
"""
