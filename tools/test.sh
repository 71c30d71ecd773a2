#!/usr/bin/env bash
# `make test`: every test, in two lanes at once. A TCG VM keeps one core busy and the integration tests
# mostly wait on the control plane's timers, so one lane alone leaves a core idle most of the run:
#   vm-node: the VM node's stories (tests/image/test_real_node.py: it builds the test image first, if
#            its inputs changed), then the integration level;
#   suite:   everything else in the usual order: host, the other image tests (they wait for that build
#            under its lock), unit.
# Each lane prints its own lines prefixed with its name, and its own summary (time by level, slowest
# tests, figures); a failure prints as it happens. Arguments go to both lanes' pytest (`--long`).
# The exit status is the first failing lane's.
set -uo pipefail
cd "$(dirname "$0")/.."

python=.venv/bin/python
temp=$(mktemp -d /tmp/maculaos-test.XXXXXX)   # each lane its own pytest folder: one prunes the other's
trap 'kill 0 2>/dev/null' INT TERM             # CI's time limit or ^C: both lanes stop

lane() {
  local name=$1; shift
  "$python" -m pytest --basetemp="$temp/$name" "$@" 2>&1 | sed -u "s/^/[$name] /"
  return "${PIPESTATUS[0]}"
}

lane vm-node tests/image/test_real_node.py tests/integration "$@" &
vm_node=$!
lane suite --ignore=tests/image/test_real_node.py --ignore=tests/integration "$@" &
suite=$!

wait "$vm_node"; vm_node_status=$?
wait "$suite"; suite_status=$?
if [ "$vm_node_status" -eq 0 ] && [ "$suite_status" -eq 0 ]; then
  rm -rf "$temp"   # the VMs' disks are gigabytes
  exit 0
fi
echo "[test] failed: vm-node exit $vm_node_status, suite exit $suite_status; the tests' folders are kept in $temp"
if [ "$vm_node_status" -ne 0 ]; then exit "$vm_node_status"; fi
exit "$suite_status"
