#!/usr/bin/env bash
# The next Airflow, before users meet it: the newest release of apache-airflow, and the newest
# pre-release when the index has one newer than that, each in .venv-airflow-canary with whatever
# else resolves today (no lock), on the tiers that touch Airflow's APIs: unit, loopback, integration
# and the deployment.
#
#   scripts/canary.sh            try both, whatever they are; fail when a test fails
#   scripts/canary.sh --if-new   skip each version that is already a locked line (constraints/)
#   scripts/canary.sh --quick    the unit and loopback tiers only (minutes, not twenty): CI's way
#
# Each version's output goes to .canary-<version>.log; a line per version says how it went.
set -uo pipefail
cd "$(dirname "$0")/.."

BIN=.venv/bin
VENV=.venv-airflow-canary
only_if_new=false
tiers="tests/unit tests/loopback tests/integration tests/system"
for flag in "$@"; do
	case $flag in
	--if-new) only_if_new=true ;;
	--quick) tiers="tests/unit tests/loopback" ;;
	*) echo "canary: unknown flag $flag" >&2; exit 2 ;;
	esac
done

newest() {  # the newest version the index holds; with --pre, pre-releases count too
	"$BIN/python" -m pip index versions apache-airflow "$@" 2>/dev/null | sed -n 's/^apache-airflow (\(.*\))$/\1/p'
}
release=$(newest)
pre=$(newest --pre)
if [ -z "$release" ]; then
	echo "canary: the package index lists no apache-airflow release" >&2
	exit 1
fi
versions=$release
[ -n "$pre" ] && [ "$pre" != "$release" ] && versions="$release $pre"
locked=" $(sed -n 's/^apache-airflow==//p' constraints/*.txt | sort -u | tr '\n' ' ')"

failed=0
for version in $versions; do
	if $only_if_new && [[ "$locked" == *" $version "* ]]; then
		echo "canary: Airflow $version is a locked line; skipped"
		continue
	fi
	log=".canary-$version.log"
	started=$SECONDS
	{
		[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
		"$BIN/uv" pip install --python "$VENV/bin/python" --quiet --prerelease=allow "apache-airflow==$version" -e '.[dev]' &&
			QWEN_UNLOCKED=1 "$VENV/bin/pytest" -q -p no:cacheprovider -n 2 --no-loadscope-reorder --durations=10 \
				$tiers -m "not fault_matrix and not fresh_venv"
	} >"$log" 2>&1
	status=$?
	summary=$(grep -E '(passed|failed|error).* in [0-9.]+s' "$log" | tail -1 | tr -d '=' | sed 's/^ *//;s/ *$//')
	if [ $status -eq 0 ]; then
		echo "canary: Airflow $version works (${summary:-no summary}; $((SECONDS - started)) s; $log)"
	else
		[ $status -eq 5 ] && summary="pytest collected no tests"
		echo "canary: Airflow $version BREAKS the provider (${summary:-install failed, see the log}; $log)"
		failed=1
	fi
done
exit $failed
