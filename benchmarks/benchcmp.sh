#!/usr/bin/env bash
# benchcmp.sh OLD NEW [PACKAGES...]: run the Go micro-benchmarks of two
# commits and compare them with benchstat (make benchcmp OLD=... NEW=...).
# Each commit is checked out into a temporary directory (git archive), so
# the working tree is left alone; both run on this machine one after the
# other, COUNT times each (default 6), and benchstat reports the change
# with its confidence interval. BENCH selects benchmarks (default: all of
# the packages' hot-path benchmarks), BENCHTIME their length (default 1s).
set -euo pipefail
old=${1:?usage: benchcmp.sh OLD NEW [PACKAGES...]}
new=${2:?usage: benchcmp.sh OLD NEW [PACKAGES...]}
shift 2
pkgs=("$@")
if [ ${#pkgs[@]} -eq 0 ]; then
	pkgs=(./tunnel/resume/ ./tunnel/server/ ./mesh/route/ ./mesh/geo/ ./mesh/ingress/ ./auth/ca/ ./cmd/jumpgate/)
fi
count=${COUNT:-6}
bench=${BENCH:-.}
benchtime=${BENCHTIME:-1s}
# benchstat from golang.org/x/perf, pinned.
benchstat_mod=golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da

root=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

run() { # rev out
	local rev=$1 out=$2 dir="$work/src-$1"
	mkdir -p "$dir"
	git -C "$root" archive --format=tar "$rev" | tar -x -C "$dir"
	echo "== $rev ($(git -C "$root" rev-parse --short "$rev")): ${pkgs[*]}" >&2
	# Packages that do not exist at that commit are skipped, not fatal.
	local have=()
	for p in "${pkgs[@]}"; do [ -d "$dir/$p" ] && have+=("$p"); done
	(cd "$dir" && go test -run '^$' -bench "$bench" -skip IdleTunnels -benchtime "$benchtime" -count "$count" "${have[@]}") >"$out"
}
run "$old" "$work/old.txt"
run "$new" "$work/new.txt"
if [ -n "${BENCHCMP_KEEP:-}" ]; then # a directory to keep the raw results in
	mkdir -p "$BENCHCMP_KEEP" && cp "$work/old.txt" "$work/new.txt" "$BENCHCMP_KEEP/"
fi
go run "$benchstat_mod" "old=$work/old.txt" "new=$work/new.txt"
