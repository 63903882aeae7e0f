#!/usr/bin/env bash
# Every check a newcomer and CI run: install what the tests need, then lint, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if ! command -v uv >/dev/null 2>&1; then
    log "installing uv"
    python3 -m pip install --quiet uv
fi
log "syncing the virtual environment from uv.lock"
uv sync --frozen --all-extras --quiet

# Optional system tools some tests use; installed once, skipped when present or unavailable.
apt_install() {
    local missing=()
    for pair in "$@"; do
        local cmd=${pair%%:*} pkg=${pair##*:}
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        log "installing ${missing[*]}"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") \
            >/dev/null 2>&1 || echo "warning: could not install ${missing[*]}; their tests will skip"
    fi
}
apt_install promtool:prometheus docker-compose:docker-compose pgbouncer:pgbouncer wrk:wrk \
    redis-server:redis-server redis-cli:redis-tools

# Services: TEST_* when set, else PostgreSQL and Redis on localhost, else the embedded ones.
if [ -z "${TEST_DATABASE_URL:-}" ]; then
    if uv run python -c "import socket; socket.create_connection(('127.0.0.1', 5432), 1)" 2>/dev/null; then
        export TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:5432/postgres"
    else
        log "no PostgreSQL on localhost: starting the embedded one"
        eval "$(uv run python scripts/embedded.py start --database postgres --only postgres | sed 's/^DATABASE_URL=/export TEST_DATABASE_URL=/')"
    fi
fi
if [ -z "${TEST_REDIS_URL:-}" ]; then
    if uv run python -c "import socket; socket.create_connection(('127.0.0.1', 6379), 1)" 2>/dev/null; then
        export TEST_REDIS_URL="redis://127.0.0.1:6379/15"
    else
        log "no Redis on localhost: starting the embedded one"
        eval "$(uv run python scripts/embedded.py start --only redis | sed -e 's/^REDIS_URL=/export TEST_REDIS_URL=/' -e 's#/0$#/15#')"
    fi
fi
echo "PostgreSQL: $TEST_DATABASE_URL"
echo "Redis:      $TEST_REDIS_URL"

log "ruff check"
uv run ruff check .
log "ruff format --check"
uv run ruff format --check .
log "mypy (strict) on app/"
uv run mypy
log "pytest"
uv run pytest "$@"
