"""The command line: the only place that prints, renders progress and turns errors into exit codes."""
