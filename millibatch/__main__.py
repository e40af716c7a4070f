"""`python -m millibatch` is the `millibatch` command."""

import sys

from millibatch.cli import main

sys.exit(main())
