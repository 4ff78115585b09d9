#!/usr/bin/env bash
# The short pass CI runs on every submission: every nemesis at least once (each kind runs once
# per round, and a 60 s run has more than one round), against all the workloads on one
# three-node cluster; then the power-loss self-test (a node that never fsyncs its WAL must be
# caught). About 5 minutes. Fails on the first run a checker finds invalid (its folder under
# jepsen/store/ holds the history, the timeline, the verdicts, the picture and the node logs).
#
# Longer runs: JEPSEN_TIME=600 JEPSEN_SEEDS="1 2 3" jepsen/ci.sh; JEPSEN_EACH=1 also runs
# every nemesis alone; JEPSEN_NODES=5 for five nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
time="${JEPSEN_TIME:-60}"
seeds="${JEPSEN_SEEDS:-1}"
nodes="${JEPSEN_NODES:-3}"
nemeses="all"
if [ "${JEPSEN_EACH:-}" = 1 ]; then
  nemeses="kill pause partition netem wipe clock disk-full membership power-loss all"
fi
build=0
for seed in $seeds; do
  for nemesis in $nemeses; do
    echo "== jepsen: --nodes $nodes --workload all --nemesis $nemesis --time $time --seed $seed"
    WEFT_JEPSEN_NO_BUILD=$build jepsen/run.sh --nodes "$nodes" --workload all --nemesis "$nemesis" --time "$time" --seed "$seed"
    build=1
  done
done
echo "== jepsen self-test: the checkers must catch a node that never fsyncs its WAL"
WEFT_JEPSEN_NO_BUILD=1 jepsen/run.sh --nodes 3 --workload all --nemesis power-loss --time 15 --seed 1 --self-test no-wal-sync
