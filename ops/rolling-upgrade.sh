#!/usr/bin/env bash
# rolling-upgrade.sh: upgrade Jumpgate proxies one at a time, one region at
# a time, without dropping sessions. For each proxy: `jgctl proxy drain`
# (agents and resumable sessions move to other proxies; the proxy exits),
# run the restart command (which starts the new build), then
# `jgctl proxy wait-ready` (reporting again, active, seen alive by every
# peer, running --version if given) before the next proxy. It stops at the
# first failure, leaving the rest untouched. See ops/README.md, "Rolling
# upgrades".
#
#   ops/rolling-upgrade.sh --restart 'ssh {proxy} sudo systemctl start jumpgate' \
#       [--regions eu,us,ap] [--proxies p1,p2] [--version 1.4.0] \
#       [--drain-timeout 5m] [--ready-timeout 2m] [--dry-run]
#
# {proxy} and {region} in the restart command are replaced by the proxy's
# id and region. jgctl is $JGCTL (default: jgctl on $PATH) and uses its
# usual admin identity and auth address ($JUMPGATE_ADMIN_IDENTITY,
# $JUMPGATE_AUTH).
set -euo pipefail

JGCTL=${JGCTL:-jgctl}
restart="" regions="" only="" version="" drain_timeout=5m ready_timeout=2m dry=0

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while [ $# -gt 0 ]; do
	case "$1" in
	--restart) restart=$2; shift 2 ;;
	--regions) regions=$2; shift 2 ;;
	--proxies) only=$2; shift 2 ;;
	--version) version=$2; shift 2 ;;
	--drain-timeout) drain_timeout=$2; shift 2 ;;
	--ready-timeout) ready_timeout=$2; shift 2 ;;
	--dry-run) dry=1; shift ;;
	-h | --help) usage 0 ;;
	*) echo "rolling-upgrade: unknown argument $1" >&2; usage ;;
	esac
done
[ -n "$restart" ] || { echo "rolling-upgrade: --restart is required" >&2; usage; }

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# The regions, in the order given, else as jgctl lists them.
if [ -z "$regions" ]; then
	regions=$("$JGCTL" proxies ls --json | tr ',' '\n' | sed -n 's/.*"region": *"\([^"]*\)".*/\1/p' | awk '!seen[$0]++' | paste -sd, -)
fi
[ -n "$regions" ] || { echo "rolling-upgrade: no proxies with a region reported to auth (jgctl proxies ls)" >&2; exit 1; }

plan=()
IFS=, read -r -a region_list <<<"$regions"
for r in "${region_list[@]}"; do
	for p in $("$JGCTL" proxies ls --region "$r" --quiet | sort); do
		if [ -n "$only" ] && [[ ",$only," != *",$p,"* ]]; then
			continue
		fi
		plan+=("$r/$p")
	done
done
[ ${#plan[@]} -gt 0 ] || { echo "rolling-upgrade: no proxy to upgrade (regions $regions, proxies ${only:-all})" >&2; exit 1; }
log "plan: ${plan[*]}"

n=0
for step in "${plan[@]}"; do
	n=$((n + 1))
	region=${step%%/*} proxy=${step#*/}
	cmd=${restart//\{proxy\}/$proxy}
	cmd=${cmd//\{region\}/$region}
	if [ "$dry" = 1 ]; then
		log "[$n/${#plan[@]}] would drain $proxy ($region), run: $cmd, and wait until it is ready"
		continue
	fi
	log "[$n/${#plan[@]}] draining $proxy ($region)"
	"$JGCTL" proxy drain "$proxy" --timeout "$drain_timeout"
	since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
	log "[$n/${#plan[@]}] restarting $proxy: $cmd"
	bash -c "$cmd"
	log "[$n/${#plan[@]}] waiting for $proxy to be ready"
	ready_args=(proxy wait-ready "$proxy" --since "$since" --timeout "$ready_timeout")
	[ -z "$version" ] || ready_args+=(--version "$version")
	"$JGCTL" "${ready_args[@]}"
done
log "done: ${#plan[@]} proxies upgraded"
