#!/usr/bin/env bash
# Prints a DATABASE_URL that answers. Uses the given one when its server is up
# (creating the database if needed); otherwise starts a project-local PostgreSQL
# cluster under .data/postgres on port 55432 and prints its URL.
set -euo pipefail
url="${1:-postgres://postgres@127.0.0.1:5432/tally}"
hostport="${url#*@}"; hostport="${hostport%%/*}"
host="${hostport%%:*}"; port="${hostport##*:}"; [ "$port" = "$hostport" ] && port=5432
dbname="${url##*/}"; dbname="${dbname%%\?*}"

ensure_db() { # host port user db
    if ! psql -h "$1" -p "$2" -U "$3" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$4'" | grep -q 1; then
        psql -h "$1" -p "$2" -U "$3" -d postgres -qc "CREATE DATABASE \"$4\"" >&2
    fi
}

if pg_isready -h "$host" -p "$port" -q 2>/dev/null; then
    user="${url#*://}"; user="${user%%@*}"; user="${user%%:*}"
    ensure_db "$host" "$port" "$user" "$dbname" || true
    echo "$url"
    exit 0
fi

bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
initdb="$(command -v initdb || echo "$bindir/initdb")"
pg_ctl="$(command -v pg_ctl || echo "$bindir/pg_ctl")"
if [ ! -x "$initdb" ] || [ ! -x "$pg_ctl" ]; then
    echo "No PostgreSQL answers at $host:$port and initdb/pg_ctl are not installed." >&2
    echo "Install PostgreSQL or set DATABASE_URL to a running server." >&2
    exit 1
fi

local_port=55432
dir="$(pwd)/.data/postgres"
as=()
if [ "$(id -u)" = 0 ]; then
    # PostgreSQL refuses to run as root: run it as the postgres user, in a folder it can reach.
    mkdir -p "$dir"
    chown postgres "$dir"
    if ! runuser -u postgres -- test -w "$dir"; then
        dir="${TMPDIR:-/tmp}/tally-postgres"
        install -d -o postgres "$dir"
    fi
    as=(runuser -u postgres --)
else
    mkdir -p "$dir"
fi
if [ ! -f "$dir/data/PG_VERSION" ]; then
    echo "Creating a local PostgreSQL cluster in $dir" >&2
    "${as[@]}" "$initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --no-locale >/dev/null
fi
if ! pg_isready -h 127.0.0.1 -p "$local_port" -q 2>/dev/null; then
    "${as[@]}" "$pg_ctl" -D "$dir/data" -l "$dir/log" -w \
        -o "-p $local_port -k /tmp -c listen_addresses=127.0.0.1" start >&2
fi
ensure_db 127.0.0.1 "$local_port" postgres "$dbname"
echo "postgres://postgres@127.0.0.1:$local_port/$dbname"
