"""Names shared by the API (which enqueues) and the worker (which executes).

The API enqueues by *name* with ``send_task`` and never imports the worker, so
torch stays out of the API process.
"""

RUN_TRIAL = "samsweep.run_trial"
