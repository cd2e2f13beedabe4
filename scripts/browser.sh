#!/usr/bin/env bash
# The browser tests (tests/e2e/browser/test_study_page.py) drive Debian's chromium through Playwright (the
# library only: Playwright's own browser download is never used). Installs chromium when
# it is missing; idempotent. Needs root (CI) or sudo.
set -euo pipefail

if command -v chromium >/dev/null; then
  echo "chromium is installed: $(command -v chromium)"
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null; then
  SUDO="sudo"
else
  echo "browser.sh: chromium is missing; install it as root: apt-get install -y chromium" >&2
  exit 1
fi
echo "installing chromium (Debian package)"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium
command -v chromium
