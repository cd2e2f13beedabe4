"""What the tests share, by concern (the fixtures and hooks stay in tests/conftest.py and
tests/e2e/conftest.py):

- paths: the repository root and the shared data directory
- db: the real PostgreSQL and Redis (addresses, reachability, a fresh database, rows)
- specs: study specs the tests submit
- http: free ports, the one polling wait, waiting for a study, a misbehaving HTTP server
- processes: a deployment of real samsweep processes (API, workers, CLI)
- datasets: tiny and crafted CIFAR-10 batches
- compose_emulator: docker-compose.yml run as local processes
"""
