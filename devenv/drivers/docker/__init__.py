"""The Docker driver: containers through the Engine API (devenv.transports.dockerapi)."""
