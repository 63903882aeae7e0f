#!/usr/bin/env bash
# Everything, for a newcomer: Docker Compose when a Docker engine answers; otherwise embedded
# PostgreSQL and Redis under .tessera/ (they need nothing but Python), the dev issuer, the API
# and a demo tenant. Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."

API_PORT=${API_PORT:-8000}
ISSUER_PORT=${ISSUER_PORT:-8001}

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    echo "Docker engine found: docker compose up --build"
    exec docker compose up --build
fi

echo "No Docker engine: starting embedded services under .tessera/"
if ! command -v uv >/dev/null 2>&1; then
    python3 -m pip install --quiet uv
fi
uv sync --frozen --all-extras --quiet

pids=()
cleanup() {
    trap - INT TERM EXIT
    echo
    echo "stopping..."
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    uv run python scripts/embedded.py stop
    echo "stopped (data kept in .tessera/)"
}
trap cleanup INT TERM EXIT

eval "$(uv run python scripts/embedded.py start | sed 's/^/export /')"
export AUTH_ISSUER="http://127.0.0.1:${ISSUER_PORT}"
export LOG_FORMAT=${LOG_FORMAT:-console}

uv run tessera migrate
uv run tessera dev-issuer --host 127.0.0.1 --port "$ISSUER_PORT" &
pids+=($!)
uv run tessera tenants create demo --name "Demo Inc." --plan pro --if-missing
uv run tessera serve --host 127.0.0.1 --port "$API_PORT" &
pids+=($!)

for _ in $(seq 1 100); do
    if uv run python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:${API_PORT}/readyz', timeout=1)" 2>/dev/null; then
        break
    fi
    sleep 0.2
done

TOKEN=$(uv run tessera dev-token --tenant demo --scope "api:read api:write")
ADMIN_TOKEN=$(uv run tessera dev-token --admin)
cat <<INFO

Tessera is running (embedded mode):
  API           http://127.0.0.1:${API_PORT}      docs: http://127.0.0.1:${API_PORT}/docs
  dev issuer    ${AUTH_ISSUER}
  PostgreSQL    ${DATABASE_URL}
  Redis         ${REDIS_URL}
  data          .tessera/

Try it:
  export TOKEN='${TOKEN}'
  curl -s -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:${API_PORT}/v1/tenant
  curl -s -X POST -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
       -d '{"name": "First project"}' http://127.0.0.1:${API_PORT}/v1/projects

An admin token (scope platform:admin):
  export ADMIN_TOKEN='${ADMIN_TOKEN}'
  curl -s -H "Authorization: Bearer \$ADMIN_TOKEN" http://127.0.0.1:${API_PORT}/admin/v1/tenants

Ctrl-C stops everything.
INFO
wait
