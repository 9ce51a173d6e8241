#!/usr/bin/env bash
# Debian's Chromium for the dashboard's browser tests (Playwright's own download does not work here).
set -u
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "installing Debian's chromium"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "could not install chromium: browser tests will be skipped" >&2
else
  echo "chromium missing and not root: browser tests will be skipped" >&2
fi
exit 0
