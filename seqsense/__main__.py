"""`python -m seqsense` runs the command line."""

import sys

from seqsense.cli import main

sys.exit(main())
