"""One module per ``genserve`` subcommand; see :mod:`genserve.cli`."""
