#!/usr/bin/env bash
# Runs a command with a throwaway PostgreSQL server: a fresh cluster in a
# temp dir on a free loopback port, its URL in POSTGRES_TEST_URL
# (a superuser, so tests can create a database each). Stopped and removed on
# exit. Needs Debian's `postgresql` package (.ci/run installs it).
#
# With --ssl the server speaks TLS only (ssl=on, a certificate signed by a
# CA made here with openssl, plain-TCP connections rejected in pg_hba.conf),
# and POSTGRES_TEST_URL asks for sslmode=require; the CA's file is in
# POSTGRES_TEST_CA for clients that verify it (sslmode=verify-full).
#
# usage: scripts/with-postgres.sh [--ssl] COMMAND [ARGS...]
set -euo pipefail
ssl=""
if [ "${1:-}" = "--ssl" ]; then ssl=1; shift; fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$PGBIN" ]; then
  echo "PostgreSQL is not installed (apt-get install postgresql)" >&2
  exit 1
fi
dir=$(mktemp -d /tmp/cyberimage-pg.XXXXXX)
# The server refuses to run as root; run it as the `postgres` user then.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg "$PGBIN/initdb" -D "$dir/data" -A trust -U cyberimage >/dev/null
stop() {
  as_pg "$PGBIN/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap stop EXIT
options="-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
query=""
if [ -n "$ssl" ]; then
  tls="$dir/tls"
  mkdir "$tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=CyberImage test CA" \
    -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$tls/ext.cnf"
  openssl x509 -req -days 1 -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
    -CAcreateserial -extfile "$tls/ext.cnf" -out "$tls/server.pem" 2>/dev/null
  chmod 600 "$tls/server.key"
  if [ "$(id -u)" = 0 ]; then chown -R postgres: "$tls"; fi
  # TLS or nothing over TCP: a client that ignored sslmode would be refused.
  printf 'local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n' \
    > "$dir/data/pg_hba.conf"
  options="$options -c ssl=on -c ssl_cert_file=$tls/server.pem -c ssl_key_file=$tls/server.key"
  query="?sslmode=require"
  export POSTGRES_TEST_CA="$tls/ca.pem"
fi
# fsync off: a test server's data is thrown away anyway.
as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -o "$options" start >/dev/null
export POSTGRES_TEST_URL="postgres://cyberimage@127.0.0.1:$port/postgres$query"
"$@"
