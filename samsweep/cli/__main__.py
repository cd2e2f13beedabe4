"""`python -m samsweep.cli`: how samsweep starts its own processes (`up` its worker, `run`
its embedded server), with the interpreter that runs it."""

import sys

from samsweep.cli.commands import main

# The guard matters: the API's plot processes are started with `spawn`, which imports the
# main module again (as __mp_main__) in each child.
if __name__ == "__main__":
    sys.exit(main())
