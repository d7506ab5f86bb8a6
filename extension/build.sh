#!/usr/bin/env bash
# Rebuild the prebuilt front end in ../src/durabook/labextension (needs Node.js and
# the project's venv, for `jupyter labextension build`).
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$(cd .. && pwd)/.venv/bin:$PATH"
npm install --no-audit --no-fund
npm run build
