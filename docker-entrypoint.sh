#!/bin/sh
# The image's entry point: wait for the database and Redis, migrate, then become the given command
# (exec, so the command is the process that receives the container's signals).
#   WAIT_TIMEOUT     seconds to wait for the database and Redis together (default 60)
#   SKIP_MIGRATIONS  1 to skip `flask --app wsgi init-db` (the worker and scheduler in compose)
set -eu

cd "$(dirname "$0")"

if [ "$#" -eq 0 ]; then
    set -- gunicorn wsgi:app
fi

python scripts/wait_for_services.py --timeout "${WAIT_TIMEOUT:-60}"

case "${SKIP_MIGRATIONS:-0}" in
    1 | true | yes)
        echo "[entrypoint] SKIP_MIGRATIONS is set: not migrating"
        ;;
    *)
        if ! flask --app wsgi init-db; then
            echo "[entrypoint] error: migrating the database failed (see above); not starting $1" >&2
            exit 1
        fi
        ;;
esac

echo "[entrypoint] starting $1"
exec "$@"
