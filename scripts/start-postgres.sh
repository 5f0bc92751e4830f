#!/usr/bin/env bash
# Starts a throwaway PostgreSQL (Debian's packages) for the store tests, if
# it is not running yet, and prints its URL. Data lives in $RAG_PG_DIR
# (default /tmp/rag-test-pg); trust authentication, loopback only.
set -euo pipefail
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$PGBIN" ]; then
    echo "PostgreSQL is not installed: apt-get install -y postgresql" >&2
    exit 1
fi
DIR=${RAG_PG_DIR:-/tmp/rag-test-pg}
PORT=${RAG_PG_PORT:-54329}
# The server refuses to run as root: run it as the packages' postgres user.
as_pg() {
    if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$1"; else sh -c "$1"; fi
}
if ! as_pg "'$PGBIN/pg_ctl' -D '$DIR' status" >/dev/null 2>&1; then
    rm -rf "$DIR"
    mkdir -p "$DIR"
    if [ "$(id -u)" = 0 ]; then chown postgres "$DIR"; fi
    as_pg "'$PGBIN/initdb' -D '$DIR' -A trust -U rag" >/dev/null
    as_pg "'$PGBIN/pg_ctl' -D '$DIR' -l '$DIR/server.log' -w \
        -o \"-p $PORT -k '$DIR' -c listen_addresses=127.0.0.1\" start" >/dev/null
fi
echo "postgres://rag@127.0.0.1:$PORT/postgres"
