#!/usr/bin/env bash
# Installs playwright-core and unpacks the prebuilt OHIF Viewer (npm @ohif/app dist/) into
# node_modules/.ohif-app/. `npm install @ohif/app` cannot be used: its workspace peers are not
# all published, so the tarball is fetched with `npm pack` and only its dist/ is kept.
set -euo pipefail
cd "$(dirname "$0")"
OHIF_VERSION="${OHIF_VERSION:-3.13.2}"
[ -d node_modules/playwright-core ] || npm install --no-audit --no-fund --ignore-scripts >/dev/null
if [ ! -f node_modules/.ohif-app/dist/index.html ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack "@ohif/app@${OHIF_VERSION}" >/dev/null)
  mkdir -p node_modules/.ohif-app
  tar xzf "$tmp"/ohif-app-*.tgz -C "$tmp"
  rm -rf node_modules/.ohif-app/dist
  mv "$tmp/package/dist" node_modules/.ohif-app/dist
fi
