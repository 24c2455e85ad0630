"""``python -m jinabatch COMMAND ...``: the same as the installed ``jinabatch`` command."""
import sys

from .cli import main

sys.exit(main())
