#!/usr/bin/env bash
# Make sure the servers the tests talk to are up: PostgreSQL on 127.0.0.1:5432 (trust
# auth, database `test`) and Redis on 127.0.0.1:6379. Starts the local Debian-packaged
# servers if they are installed and down; otherwise says what is missing.
set -euo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_up() {
  for _ in $(seq 1 60); do up "$1" && return 0; sleep 0.5; done
  echo "services.sh: $2 did not come up on port $1" >&2; return 1
}

if ! up 5432; then
  if command -v pg_ctlcluster >/dev/null && ls /etc/postgresql >/dev/null 2>&1; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
    wait_up 5432 PostgreSQL
  else
    echo "services.sh: PostgreSQL is not running on 127.0.0.1:5432 and is not installed here" >&2
    exit 1
  fi
fi

if ! up 6379; then
  if command -v redis-server >/dev/null; then
    echo "starting Redis"
    mkdir -p /tmp/samsweep-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp/samsweep-redis --logfile /tmp/samsweep-redis/redis.log
    wait_up 6379 Redis
  else
    echo "services.sh: Redis is not running on 127.0.0.1:6379 and is not installed here" >&2
    exit 1
  fi
fi
echo "PostgreSQL and Redis are up"
