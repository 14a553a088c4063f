"""The `deepdram` command line: one module per subcommand, heavy libraries imported when a command runs."""
