"""samsweep: hyperparameter search for SAM, shared core.

This package holds what both the API (`service`) and the workers (`worker`) use:
the study spec, settings, the database tables, Optuna storage and task names.
It never imports torch, FastAPI or the worker.
"""

__version__ = "0.1.0"
