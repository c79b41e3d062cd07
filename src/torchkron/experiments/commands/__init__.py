"""The ``torchkron`` subcommands, one module each."""
