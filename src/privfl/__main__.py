"""``python -m privfl``: the ``privfl`` command."""

import sys

from privfl.cli.main import main

sys.exit(main())
