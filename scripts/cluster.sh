#!/usr/bin/env bash
# A development cluster of `weft server` processes on 127.0.0.1 (three unless told otherwise).
#
#   scripts/cluster.sh up          start the nodes that are not running, `weft cluster init`, wait
#   scripts/cluster.sh down        SIGTERM every node, wait (bounded), SIGKILL what is left
#   scripts/cluster.sh status      each node's pid, state and port, then `weft cluster status`
#   scripts/cluster.sh kill N      SIGKILL node N
#   scripts/cluster.sh stop N      SIGSTOP node N (paused: a slow or hung node)
#   scripts/cluster.sh cont N      SIGCONT node N
#   scripts/cluster.sh restart N   SIGTERM node N, wait (bounded), SIGKILL if needed, start it again
#   scripts/cluster.sh wipe N      SIGKILL node N, delete its data dir, start it again (empty)
#   scripts/cluster.sh add N       start a new node N with --join, `weft cluster add-node` it
#   scripts/cluster.sh remove N    `weft cluster remove-node` node N (through another node)
#
# Node N serves gRPC on 127.0.0.1:$((WEFT_CLUSTER_PORT_BASE+N)) and metrics on
# 127.0.0.1:$((WEFT_CLUSTER_PORT_BASE+10+N)); its files are under $WEFT_CLUSTER_DIR/nN: node.toml
# (written at every start; the node runs `weft server --config nN/node.toml`), data/ (its data
# dir), weft.pid and weft.log (appended to). Only processes started by this script are signalled:
# a pid is used only while its pid file names it and its command line names that node.toml.
#
# Environment:
#   WEFT_CLUSTER_DIR         ./.weft-cluster in the repository (relative paths: to the caller's cwd)
#   WEFT_CLUSTER_PORT_BASE   7470
#   WEFT_CLUSTER_NODES       3 (up to 9: 5 is the other size a cluster has)
#   WEFT_CLUSTER_SHARDS      16, for `weft cluster init --shards`
#   WEFT_CLUSTER_REPLICAS    3, for `weft cluster init --replicas`
#   WEFT_CLUSTER_TIMEOUT_S   60: how long `up`, `restart` and `wipe` wait for a node or the cluster
#   WEFT_BIN                 ${CARGO_TARGET_DIR:-target}/release/weft; built with
#                            `cargo build --release --workspace --bins` when it is missing
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
absolute() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

cluster_dir="$(absolute "${WEFT_CLUSTER_DIR:-$repo/.weft-cluster}")"
port_base="${WEFT_CLUSTER_PORT_BASE:-7470}"
nodes="${WEFT_CLUSTER_NODES:-3}"
shards="${WEFT_CLUSTER_SHARDS:-16}"
replicas="${WEFT_CLUSTER_REPLICAS:-3}"
timeout_s="${WEFT_CLUSTER_TIMEOUT_S:-60}"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
case "$target_dir" in /*) ;; *) target_dir="$repo/$target_dir" ;; esac
if [[ -n "${WEFT_BIN:-}" ]]; then
  weft="$(absolute "$WEFT_BIN")"
  weft_given=1
else
  weft="$target_dir/release/weft"
  weft_given=0
fi
stop_wait_s=10

say() { printf 'cluster.sh: %s\n' "$*"; }
fail() {
  printf 'cluster.sh: error: %s\n' "$*" >&2
  exit 1
}
usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

[[ "$nodes" =~ ^[1-9]$ ]] || fail "WEFT_CLUSTER_NODES must be 1 to 9, got '$nodes'"
[[ "$port_base" =~ ^[0-9]+$ ]] && ((port_base + 10 + nodes <= 65535)) ||
  fail "WEFT_CLUSTER_PORT_BASE must be a port number leaving room for $nodes nodes, got '$port_base'"
[[ "$timeout_s" =~ ^[0-9]+$ ]] || fail "WEFT_CLUSTER_TIMEOUT_S must be a number of seconds, got '$timeout_s'"

node_dir() { printf '%s/n%s\n' "$cluster_dir" "$1"; }
grpc_port() { echo $((port_base + $1)); }
metrics_port() { echo $((port_base + 10 + $1)); }
address() { echo "127.0.0.1:$(grpc_port "$1")"; }

peers() {
  local list="" n
  for n in $(seq 1 "$nodes"); do list+="${list:+,}$n=$(address "$n")"; done
  echo "$list"
}

# The pid of node N if it is a live process this script started (its command line names the
# node's node.toml), else nothing. A zombie counts as dead.
live_pid() {
  local pid_file pid
  pid_file="$(node_dir "$1")/weft.pid"
  [[ -f "$pid_file" ]] || return 0
  pid="$(cat "$pid_file")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  [[ -r "/proc/$pid/cmdline" ]] || return 0
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$(node_dir "$1")/node.toml" || return 0
  [[ "$(process_state "$pid")" == Z ]] && return 0
  echo "$pid"
}

# One letter of /proc/PID/stat: R, S, D (running), T (stopped), Z (zombie), ...
process_state() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
  stat="${stat##*) }"
  echo "${stat%% *}"
}

state() {
  local pid
  pid="$(live_pid "$1")"
  if [[ -z "$pid" ]]; then
    echo dead
  elif [[ "$(process_state "$pid")" == [Tt] ]]; then
    echo stopped
  else
    echo running
  fi
}

# Nodes added with `add N`: their dir holds a `joined` file (and `node_id`, the id the cluster
# gave them).
joined() { [[ -f "$(node_dir "$1")/joined" ]]; }

# Every node this script manages: the founders 1..$nodes, then the added ones.
all_nodes() {
  local n
  seq 1 "$nodes"
  for n in $(seq $((nodes + 1)) 9); do joined "$n" && echo "$n"; done
  return 0
}

check_node() {
  [[ "${1:-}" =~ ^[0-9]+$ ]] && all_nodes | grep -x "$1" >/dev/null || {
    printf 'cluster.sh: error: expected a node number from 1 to %s (or an added one), got "%s"\n' "$nodes" "${1:-}" >&2
    exit 2
  }
}

# The cluster's id of node N (an added node's may differ from N).
node_id() {
  if joined "$1"; then cat "$(node_dir "$1")/node_id" 2>/dev/null || echo "$1"; else echo "$1"; fi
}

ensure_binary() {
  [[ -x "$weft" ]] && return 0
  ((weft_given)) && fail "WEFT_BIN=$weft is not an executable file"
  say "no $weft: building it (cargo build --release --workspace --bins)"
  (cd "$repo" && cargo build --release --workspace --bins)
  [[ -x "$weft" ]] || fail "the build did not produce $weft (is CARGO_TARGET_DIR set differently?)"
}

log_tail() {
  local log
  log="$(node_dir "$1")/weft.log"
  echo "--- last lines of $log ---" >&2
  tail -n 20 "$log" >&2 2>/dev/null || true
  echo "---" >&2
}

write_config() {
  local dir
  dir="$(node_dir "$1")"
  if joined "$1"; then
    cat >"$dir/node.toml" <<EOF
# Written by scripts/cluster.sh at every start of node $1 (added with \`add\`); edits are lost.
join = true
listen = "$(address "$1")"
advertise_addr = "$(address "$1")"
data_dir = '$dir/data'
metrics_listen = "127.0.0.1:$(metrics_port "$1")"
EOF
    return 0
  fi
  cat >"$dir/node.toml" <<EOF
# Written by scripts/cluster.sh at every start of node $1; edits are lost. See deploy/node.toml.
node_id = $1
listen = "$(address "$1")"
advertise_addr = "$(address "$1")"
peers = "$(peers)"
data_dir = '$dir/data'
metrics_listen = "127.0.0.1:$(metrics_port "$1")"
shards = $shards
EOF
}

start() {
  local dir pid
  dir="$(node_dir "$1")"
  pid="$(live_pid "$1")"
  if [[ -n "$pid" ]]; then
    say "node $1 is already running (pid $pid, $(state "$1"))"
    return 0
  fi
  if [[ -f "$dir/removed" ]]; then
    say "node $1 was removed from the cluster (\`remove $1\`): not starting it (delete $dir to reuse the number)"
    return 0
  fi
  mkdir -p "$dir"
  write_config "$1"
  printf '=== %s cluster.sh starts node %s ===\n' "$(date -u +%FT%TZ)" "$1" >>"$dir/weft.log"
  # setsid: the node outlives this script and a Ctrl-C in its terminal. A background job of a
  # script is not a process-group leader, so setsid execs in place and $! is the node's pid.
  setsid "$weft" server --config "$dir/node.toml" >>"$dir/weft.log" 2>&1 </dev/null &
  echo $! >"$dir/weft.pid"
  say "started node $1 (pid $!): $weft server --config $dir/node.toml, log $dir/weft.log"
}

# Waits until node N's gRPC port accepts connections; fails with the log tail if the node
# exits or the deadline passes.
wait_port() {
  local port deadline
  port="$(grpc_port "$1")"
  deadline=$((SECONDS + timeout_s))
  say "waiting for node $1 to accept connections on 127.0.0.1:$port"
  while :; do
    if [[ -z "$(live_pid "$1")" ]]; then
      log_tail "$1"
      fail "node $1 exited before accepting connections on 127.0.0.1:$port (its log is above)"
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      say "node $1 accepts connections on 127.0.0.1:$port"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      log_tail "$1"
      fail "node $1 did not accept connections on 127.0.0.1:$port within ${timeout_s}s (its log is above)"
    fi
    sleep 0.1
  done
}

# Waits until PID is gone (or a zombie), at most $2 seconds; returns 1 if it is still there.
wait_gone() {
  local deadline=$((SECONDS + $2))
  while [[ -d "/proc/$1" && "$(process_state "$1")" != Z ]]; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

signal() {
  local pid
  pid="$(live_pid "$2")"
  if [[ -z "$pid" ]]; then
    say "node $2 is not running: no $1 sent"
    return 0
  fi
  say "sending $1 to node $2 (pid $pid)"
  kill "-$1" "$pid"
  if [[ "$1" == KILL ]]; then
    wait_gone "$pid" "$stop_wait_s" || fail "node $2 (pid $pid) is still there ${stop_wait_s}s after SIGKILL"
  fi
}

# SIGTERM (and SIGCONT, so a paused node can act on it), up to $stop_wait_s s, then SIGKILL.
terminate() {
  local pid
  pid="$(live_pid "$1")"
  if [[ -z "$pid" ]]; then
    say "node $1 is not running"
    return 0
  fi
  say "sending TERM to node $1 (pid $pid)"
  kill -TERM "$pid"
  kill -CONT "$pid" 2>/dev/null || true
}

await_terminated() {
  local pid="$2"
  if wait_gone "$pid" "$stop_wait_s"; then
    say "node $1 (pid $pid) has exited"
  else
    say "node $1 (pid $pid) still running ${stop_wait_s}s after SIGTERM: sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" "$stop_wait_s" || fail "node $1 (pid $pid) is still there after SIGKILL"
  fi
}

stop_gracefully() {
  local pid
  pid="$(live_pid "$1")"
  terminate "$1"
  [[ -n "$pid" ]] && await_terminated "$1" "$pid"
  return 0
}

# The first node that was not removed: `up` creates (or re-checks) the cluster through it.
first_member() {
  local n
  for n in $(all_nodes); do [[ -f "$(node_dir "$n")/removed" ]] || { echo "$n"; return 0; }; done
  echo 1
}

cluster_init() {
  local output code=0 via
  via="$(first_member)"
  say "creating the cluster: weft --server $(address "$via") cluster init --shards $shards --replicas $replicas"
  output="$("$weft" --server "$(address "$via")" cluster init --shards "$shards" --replicas "$replicas" 2>&1)" || code=$?
  [[ -n "$output" ]] && printf '%s\n' "$output"
  if ((code != 0)); then
    if grep -q "unrecognized subcommand 'init'" <<<"$output"; then
      fail "this weft binary ($weft) has no \`weft cluster init\` yet: the nodes run, but the cluster is not created"
    fi
    fail "\`weft cluster init\` failed (exit $code; its output is above); the nodes are still running: see \`scripts/cluster.sh status\`, the logs under $cluster_dir/n*/weft.log, or \`scripts/cluster.sh down\`"
  fi
}

wait_status() {
  local deadline=$((SECONDS + timeout_s)) output
  say "waiting for \`weft cluster status\` to succeed"
  until output="$("$weft" --server "$(address "$(first_member)")" cluster status 2>&1)"; do
    if ((SECONDS >= deadline)); then
      printf '%s\n' "$output" >&2
      fail "\`weft cluster status\` still fails ${timeout_s}s after \`weft cluster init\` (its last output is above)"
    fi
    sleep 0.2
  done
  printf '%s\n' "$output"
  say "the cluster is up: $(peers)"
}

cmd_up() {
  local n
  ensure_binary
  for n in $(all_nodes); do start "$n"; done
  for n in $(all_nodes); do [[ -f "$(node_dir "$n")/removed" ]] || wait_port "$n"; done
  cluster_init
  wait_status
}

cmd_down() {
  local n pids=() pid i=0
  for n in $(all_nodes); do
    pid="$(live_pid "$n")"
    terminate "$n"
    pids+=("${pid:-}")
  done
  for n in $(all_nodes); do
    pid="${pids[$i]}"
    i=$((i + 1))
    [[ -n "$pid" ]] && await_terminated "$n" "$pid"
  done
  say "every node is down (data kept in $cluster_dir; \`rm -rf $cluster_dir\` deletes it)"
}

cmd_status() {
  local n pid live=""
  for n in $(all_nodes); do
    pid="$(live_pid "$n")"
    local recorded
    recorded="$(cat "$(node_dir "$n")/weft.pid" 2>/dev/null || true)"
    printf 'node %s  pid %-8s %-8s grpc %s  metrics 127.0.0.1:%s  dir %s\n' \
      "$n" "${pid:-${recorded:--}}" "$(state "$n")" "$(address "$n")" "$(metrics_port "$n")" "$(node_dir "$n")"
    [[ -z "$live" && -n "$pid" && "$(state "$n")" == running ]] && live="$n"
  done
  if [[ -z "$live" ]]; then
    say "no node is running: no cluster status"
    return 0
  fi
  say "weft --server $(address "$live") cluster status"
  "$weft" --server "$(address "$live")" cluster status || say "\`weft cluster status\` failed (exit $?)"
}

cmd_restart() {
  ensure_binary
  stop_gracefully "$1"
  start "$1"
  wait_port "$1"
}

cmd_wipe() {
  ensure_binary
  signal KILL "$1"
  say "deleting the data dir of node $1: $(node_dir "$1")/data"
  rm -rf "$(node_dir "$1")/data"
  start "$1"
  wait_port "$1"
}

# A running node other than N, to send a command through.
other_live() {
  local n
  for n in $(all_nodes); do
    [[ "$n" != "$1" && "$(state "$n")" == running ]] && { echo "$n"; return 0; }
  done
  fail "no running node other than node $1 to send the command to"
}

cmd_add() {
  local dir via output
  [[ "$1" =~ ^[1-9]$ ]] && (($1 > nodes)) || fail "add: expected a new node number from $((nodes + 1)) to 9, got '$1'"
  dir="$(node_dir "$1")"
  [[ -d "$dir/data" ]] && ! joined "$1" && fail "add: $dir/data exists and is not an added node's"
  ensure_binary
  mkdir -p "$dir"
  touch "$dir/joined"
  start "$1"
  wait_port "$1"
  via="$(other_live "$1")"
  say "weft --server $(address "$via") cluster add-node $(address "$1")"
  output="$("$weft" --server "$(address "$via")" --output json cluster add-node "$(address "$1")")" ||
    fail "\`weft cluster add-node\` failed (its error is above); node $1 still runs, waiting to be added"
  printf '%s\n' "$output"
  sed -n 's/.*"node_id": *\([0-9]*\).*/\1/p' <<<"$output" | head -n 1 >"$dir/node_id"
  say "node $1 is node $(node_id "$1") of the cluster"
}

cmd_remove() {
  local via pid
  ensure_binary
  via="$(other_live "$1")"
  pid="$(live_pid "$1")"
  say "weft --server $(address "$via") cluster remove-node $(node_id "$1")"
  "$weft" --server "$(address "$via")" cluster remove-node "$(node_id "$1")" ||
    fail "\`weft cluster remove-node\` failed (its error is above)"
  touch "$(node_dir "$1")/removed"
  if [[ -n "$pid" ]]; then
    wait_gone "$pid" "$stop_wait_s" || say "node $1 (pid $pid) still runs after its removal"
  fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  kill) check_node "${2:-}" && signal KILL "$2" ;;
  stop) check_node "${2:-}" && signal STOP "$2" ;;
  cont) check_node "${2:-}" && signal CONT "$2" ;;
  restart) check_node "${2:-}" && cmd_restart "$2" ;;
  wipe) check_node "${2:-}" && cmd_wipe "$2" ;;
  add) cmd_add "${2:-}" ;;
  remove) check_node "${2:-}" && cmd_remove "$2" ;;
  *) usage ;;
esac
