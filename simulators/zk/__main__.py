"""``python -m simulators.zk`` = ``fpgw-sim`` (same flags, same ``ctl`` subcommand)."""

import sys

from simulators.cli import main

sys.exit(main())
