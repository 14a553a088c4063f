#!/usr/bin/env bash
# System services the test suite and the benchmarks use, installed from Debian packages if missing:
#   postgresql       server binaries (initdb, pg_ctl) for the throw-away clusters of
#                    tests/learn/search/test_postgres.py and benchmarks/bench_mlflow_scale.py
#   chromium         headless browser for the MLflow UI check (tests/mlops/test_ui.py)
#   chromium-driver  chromedriver, for whoever drives that browser with Selenium
#
# Idempotent and quiet when everything is present (`make test` and `make bench` call it every time).
# Installs with apt-get as root, or through `sudo -n` (no password prompt). Where it cannot install,
# it prints one line naming what is missing; that is a failure (exit 1) only under CI=true, where a
# test that skipped for the missing dependency would hide it. DEEPDRAM_SKIP_SETUP=1 skips the check.
set -uo pipefail

[ "${DEEPDRAM_SKIP_SETUP:-}" = 1 ] && exit 0

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] && exit 0

ci=false
case "${CI:-}" in true | True | TRUE | 1 | yes) ci=true ;; esac

cannot() {  # one line; a failure only under CI
  if $ci; then
    echo "setup_services: cannot install ${missing[*]}: $1 (CI=true: the tests needing them must not skip)" >&2
    exit 1
  fi
  echo "setup_services: ${missing[*]} not installed ($1); the tests needing them will skip" >&2
  exit 0
}

if [ "$(id -u)" = 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  cannot "not root and no password-less sudo; run: sudo apt-get install -y ${missing[*]}"
fi
command -v apt-get >/dev/null 2>&1 || cannot "no apt-get on this machine; install them with its package manager"

echo "setup_services: installing ${missing[*]} (apt-get) ..." >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
apt_opts=(-o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
if ! "${sudo[@]}" apt-get "${apt_opts[@]}" update -qq >"$log" 2>&1 ||
  ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends \
    "${missing[@]}" >>"$log" 2>&1; then
  cannot "apt-get failed: $(grep -E '^(E|W):' "$log" | tail -1 || tail -1 "$log")"
fi
echo "setup_services: installed ${missing[*]}" >&2
