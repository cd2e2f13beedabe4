"""`python -m samsweep.cli`: how samsweep starts its own processes (`up` its worker, `run`
its embedded server), with the interpreter that runs it."""

import sys

from samsweep.cli.commands import main

sys.exit(main())
