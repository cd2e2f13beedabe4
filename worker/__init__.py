"""The Celery worker: claims trials in the database and trains them with `trainer`."""
