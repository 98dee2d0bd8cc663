"""`python -m lmforge ...` is the same as the `lmforge` command (and works under torchrun)."""

import sys

from lmforge.cli.main import main

sys.exit(main())
