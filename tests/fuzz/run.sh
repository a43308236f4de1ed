#!/bin/sh
# tests/fuzz/run.sh SECONDS HARNESS... - run each libFuzzer harness for
# SECONDS over its grown corpus (build-fuzz/corpus-<name>, written to) and
# its seed corpus (tests/fuzz/corpus/<name without fuzz_>, read), then print
# one summary line per harness. `make fuzz` calls this.
#
# Each run's output also goes to build-fuzz/<name>.log; a crash, leak or
# timeout input is written as build-fuzz/<name>-crash-<sha1> (and so on).
# Every harness runs even when one fails; the exit status is 1 if any did.
set -u

secs=$1
shift
dir=build-fuzz
mkdir -p "$dir"
failed=0

for f in "$@"; do
	n=$(basename "$f")
	mkdir -p "$dir/corpus-$n"
	echo "== $n for ${secs}s"
	# dash has no pipefail: the fuzzer's status goes through a file.
	{ "$f" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix="$dir/$n-" \
		"$dir/corpus-$n" "tests/fuzz/corpus/${n#fuzz_}" 2>&1
	  echo $? >"$dir/$n.rc"; } | tee "$dir/$n.log"
	[ "$(cat "$dir/$n.rc")" = 0 ] || failed=1
done

# libFuzzer ends with "#N DONE cov: C ft: F corp: U/Sb ..." and
# "Done N runs in S second(s)"; corpus files are counted on disk.
echo "== fuzz summary (${secs}s each)"
for f in "$@"; do
	n=$(basename "$f")
	rc=$(cat "$dir/$n.rc" 2>/dev/null || echo '?')
	files=$(find "$dir/corpus-$n" "tests/fuzz/corpus/${n#fuzz_}" -type f | wc -l)
	awk -v n="$n" -v rc="$rc" -v files="$files" '
		/^#[0-9]+\t/ && / cov: / {
			for (i = 1; i <= NF; i++) {
				if ($i == "cov:") cov = $(i + 1)
				if ($i == "ft:") ft = $(i + 1)
				if ($i == "corp:") corp = $(i + 1)
			}
		}
		/^Done [0-9]+ runs in [0-9]+ second/ { runs = $2; secs = $5 }
		END {
			status = rc == 0 ? "clean" : "FAILED (exit " rc ")"
			printf "%-16s %s: %s s, %s execs, cov: %s ft: %s corp: %s, %d corpus files\n",
			    n, status, secs == "" ? "?" : secs, runs == "" ? "?" : runs,
			    cov == "" ? "?" : cov, ft == "" ? "?" : ft, corp == "" ? "?" : corp, files
		}' "$dir/$n.log"
done
exit $failed
