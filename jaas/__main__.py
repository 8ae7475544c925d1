"""``python -m jaas``: the same as the ``jaas`` console script."""

import sys

from jaas.cli import main

sys.exit(main())
