# Sourced by .ci/run: installs and starts PostgreSQL, headless Chromium and an S3 server (moto) for the server tests.
# Exports COINVISION_TEST_PG_URL, COINVISION_CHROMIUM and COINVISION_TEST_S3_URL when they are available.
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq postgresql chromium nginx-light >/dev/null
  # the mobile SDKs' suites (make test-js / test-kotlin) need Node + npm and a JDK 17 + Maven
  command -v npm >/dev/null 2>&1 || apt-get install -y -qq nodejs npm >/dev/null
  command -v mvn >/dev/null 2>&1 || apt-get install -y -qq openjdk-17-jdk-headless maven >/dev/null
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
# S3-compatible object storage for the shared-storage tests (tests/sync_server/test_s3_*.py): moto's standalone
# server (PyPI `moto[server]`, the S3 HTTP API on loopback, pure Python, no account). It gets its own small venv:
# this script runs before `make test` creates .venv, and moto's pins stay out of the project's environment.
# Exports COINVISION_TEST_S3_URL (the endpoint); tests that need it skip with the reason when it is unset.
_cv_s3_venv="${COINVISION_S3_VENV:-$PWD/.venv-s3}"
if [ ! -x "$_cv_s3_venv/bin/moto_server" ] && command -v python3 >/dev/null 2>&1; then
  python3 -m venv "$_cv_s3_venv" >/dev/null 2>&1 && printf '*\n' > "$_cv_s3_venv/.gitignore" \
    && PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= "$_cv_s3_venv/bin/python" -m pip install -q "moto[server]==5.*" \
    >/dev/null 2>&1 || echo "services.sh: could not install moto[server] into $_cv_s3_venv; S3 tests will skip" >&2
fi
if [ -x "$_cv_s3_venv/bin/moto_server" ]; then
  # One server per checkout, reused when this file is sourced again (its port is kept beside the venv).
  _cv_s3_port=$(cat "$_cv_s3_venv/port" 2>/dev/null || true)
  if [ -z "$_cv_s3_port" ] || ! "$_cv_s3_venv/bin/python" -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" "$_cv_s3_port" 2>/dev/null; then
    _cv_s3_port=$("$_cv_s3_venv/bin/python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
    nohup "$_cv_s3_venv/bin/moto_server" -H 127.0.0.1 -p "$_cv_s3_port" >"$_cv_s3_venv/moto.log" 2>&1 &
    echo $! > "$_cv_s3_venv/moto.pid"
    echo "$_cv_s3_port" > "$_cv_s3_venv/port"
    for _ in $(seq 1 100); do
      "$_cv_s3_venv/bin/python" -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" "$_cv_s3_port" 2>/dev/null && break
      sleep 0.2
    done
  fi
  export COINVISION_TEST_S3_URL="http://127.0.0.1:${_cv_s3_port}"
fi
unset _cv_s3_venv _cv_s3_port
