"""Run ``li`` as ``python -m libervia.cli``."""

import sys

from libervia.cli.main import main

sys.exit(main())
