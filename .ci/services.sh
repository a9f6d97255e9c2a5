# Sourced by .ci/run: installs and starts PostgreSQL and headless Chromium for the server tests.
# Exports COINVISION_TEST_PG_URL and COINVISION_CHROMIUM when they are available.
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq postgresql chromium nginx-light >/dev/null
fi
if command -v pg_lsclusters >/dev/null 2>&1; then
  ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
  pg_lsclusters -h | grep -q "^$ver main" || pg_createcluster "$ver" main >/dev/null
  pg_ctlcluster "$ver" main start 2>/dev/null || true
  su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
  su postgres -c "psql -qtc \"SELECT 1 FROM pg_database WHERE datname='coinvision_test'\"" | grep -q 1 \
    || su postgres -c "createdb coinvision_test"
  port=$(pg_lsclusters -h | awk -v v="$ver" '$1==v && $2=="main" {print $3}')
  # loopback needs no TLS; with it, psycopg's bundled libpq aborts the test process once coremltools/TensorFlow
  # have loaded their own OpenSSL (Fatal Python error in psycopg connect)
  export COINVISION_TEST_PG_URL="postgresql+psycopg://postgres:postgres@127.0.0.1:${port}/coinvision_test?sslmode=disable"
fi
if command -v chromium >/dev/null 2>&1; then
  export COINVISION_CHROMIUM=$(command -v chromium)
fi
