"""samsweep's core: what both the API (`service`) and the workers (`worker`) use.

It never imports torch, FastAPI, the API or the worker (pyproject.toml's contracts):

- `spec`: the study spec (pydantic), its grid of trials and the cell each belongs to;
- `admission`: the checks a spec must pass on this deployment before a study is
  accepted (data root containment, dataset files parsed without unpickling, sizes);
- `report`: the generalization-gap report and the best cell, from typed trial records;
- `wire`: the API's response models, declared by the API and parsed by the client;
- `db`: the tables (SQLAlchemy) and the engine; `migrate`: Alembic to head;
- `optuna_store`: the Optuna storage and how a trial's result is recorded there;
- `queue`: the Celery app that sends (by name, `tasks`) and the broker's settings;
- `settings`: every `SAMSWEEP_*` variable; `states`: trial and study states; `ids`.
"""
