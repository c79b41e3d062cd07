"""``python -m torchkron``: the command line."""

import sys

from torchkron.cli import main

sys.exit(main())
