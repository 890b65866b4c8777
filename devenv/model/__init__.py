"""The Devfile and box recipes as data: load, validate (every problem with file:line), schema.

Knows no engine: the option tables of drivers and provisioners come from devenv.plugins."""
