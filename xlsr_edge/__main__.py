"""`python -m xlsr_edge ...` = `xlsr-edge ...` (`python -m xlsr_edge export ...` = `export-xlsr ...`)."""

import sys

from xlsr_edge.cli import main

sys.exit(main())
