"""``python -m broker.cli``: the ``greenchannel`` command."""

import sys

from ._main import main

sys.exit(main())
