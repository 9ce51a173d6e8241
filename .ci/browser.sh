#!/usr/bin/env bash
# Debian's Chromium for the dashboard's browser tests (Playwright's own download does not work here).
set -u
if [ ! -x /usr/bin/chromium ]; then
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "installing Debian's chromium"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "could not install chromium: browser tests will be skipped" >&2
else
  echo "chromium missing and not root: browser tests will be skipped" >&2
fi
fi
# docker-compose (v1) validates docker-compose.yml in the tests; no engine runs here.
if ! command -v docker-compose >/dev/null && [ "$(id -u)" = "0" ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null 2>&1 || true
fi
exit 0
