#!/bin/bash
# The Prometheus alert rules in deploy/prometheus: promtool checks them and
# runs their unit tests (rpcgate-alerts_test.yml).
#   deploy_rules.sh DEPLOY_DIR
set -euo pipefail
command -v promtool >/dev/null || { echo "SKIP: promtool not installed (Debian package prometheus; scripts/setup.sh installs it)"; exit 77; }
cd "$1/prometheus"
promtool check rules rpcgate-alerts.yml
promtool test rules rpcgate-alerts_test.yml
