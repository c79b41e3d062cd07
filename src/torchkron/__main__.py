"""``python -m torchkron``: the command line (the library's one door into the harness)."""

from torchkron.experiments.cli import main

raise SystemExit(main())
