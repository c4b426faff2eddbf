"""Subcommands of the ``cbctqa`` command line, one module each."""
