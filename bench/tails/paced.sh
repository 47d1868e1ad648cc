#!/usr/bin/env bash
# Scheduler switches on every CPU through phase b (perf to tmpfs), with
# every lag sample kept: settle.sh, started at phase b. Then:
# python3 paced.py OUT [paced|full_speed] [MS]
#
#   BIN=target/release/etp bash bench/tails/paced.sh /tmp/paced
TRIGGER='^b\. lag' SETTLE_SECONDS=${SETTLE_SECONDS:-5} exec bash "$(dirname "$0")/settle.sh" "${1:-/tmp/paced}"
