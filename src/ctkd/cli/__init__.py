"""The ``ctkd`` command: one module per subcommand (see :mod:`ctkd.cli.main`)."""
