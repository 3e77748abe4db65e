#!/usr/bin/env bash
# Install camlens and its test dependencies into a virtual environment, then lint, type-check and test.
#
#   bash scripts/test.sh            # uses ./.venv (created if missing)
#   CAMLENS_VENV=/path bash scripts/test.sh
#
# torch is installed first, pinned, and everything else with constraints.txt, so pip never replaces it.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${CAMLENS_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install -q --disable-pip-version-check torch==2.13.0
python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"

# The HTML reports and the web app are checked in headless Chromium, the web app through Selenium and
# chromedriver (Debian's packages chromium and chromium-driver).
if { ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; } \
  && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || echo "warning: could not install chromium; the browser tests will be skipped" >&2
fi

echo "== ruff"
ruff check src tests bench scripts
ruff format --check src tests bench scripts
echo "== mypy"
mypy
echo "== pytest"
# -o addopts="" clears pyproject's default `-m 'not slow'`: CI runs every test, the slow ones too.
python -m pytest --doctest-modules src/camlens tests -p no:cacheprovider -o addopts="" -q "$@"
