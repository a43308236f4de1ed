#!/bin/sh
# tests/fuzz/coverage.sh HARNESS... - the source coverage each libFuzzer
# harness reaches on its corpus. `make fuzz-coverage` builds the harnesses
# with clang's source-based coverage (build-fuzz/cov/<name>) and calls this.
#
# Each harness replays, without fuzzing (-runs=0), its seed corpus
# (tests/fuzz/corpus/<name without fuzz_>) and the corpus `make fuzz` grew
# (build-fuzz/corpus-<name>, when there is one); the profile is merged with
# llvm-profdata and llvm-cov reports line and branch coverage of the files
# that harness targets. Profiles and full reports stay in build-fuzz/cov/
# (llvm-cov show -instr-profile=build-fuzz/cov/<name>.profdata
# build-fuzz/cov/<name> FILE shows the lines never reached).
#
# LLVM_PROFDATA and LLVM_COV override the tools; by default the ones of
# clang's own version (llvm-profdata-14 on Debian 12, package llvm-14), else
# the unversioned names.
set -eu

dir=build-fuzz/cov

# The files a harness is there to exercise; everything else it links is
# incidental (the harnesses link the whole daemon).
targets() {
	case $1 in
	fuzz_config) echo common/config.c ;;
	fuzz_mqtt_codec) echo daemon/mqtt_codec.c ;;
	fuzz_rec) echo common/rec.c ;;
	fuzz_shmring) echo common/shmring.c include/shmring.h ;;
	fuzz_topic) echo daemon/topic.c daemon/retain.c include/topic.h ;;
	fuzz_passwd) echo common/passwd.c common/b64.c ;;
	fuzz_acl) echo common/acl.c ;;
	fuzz_jwt) echo common/jwt.c common/json.c common/b64.c ;;
	fuzz_http_upgrade) echo common/http_upgrade.c ;;
	fuzz_router) echo daemon/router_records.c daemon/router_session.c \
	    daemon/router_publish.c daemon/router_queue.c daemon/router.c ;;
	fuzz_worker) echo daemon/worker_records.c daemon/qos.c ;;
	*) echo "coverage.sh: no target files listed for $1" >&2; return 1 ;;
	esac
}

tool() {
	ver=$(${CLANG:-clang} --version 2>/dev/null | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -1)
	for t in "$1-$ver" "$1"; do
		if command -v "$t" >/dev/null 2>&1; then
			echo "$t"
			return 0
		fi
	done
	echo "coverage.sh: $1 not found (Debian: apt-get install llvm-$ver)" >&2
	return 1
}

profdata=${LLVM_PROFDATA:-$(tool llvm-profdata)}
cov=${LLVM_COV:-$(tool llvm-cov)}
summary=$dir/summary.txt
: >"$summary"

for bin in "$@"; do
	n=$(basename "$bin")
	files=$(targets "$n")
	seeds=tests/fuzz/corpus/${n#fuzz_}
	grown=build-fuzz/corpus-$n
	corpora=$seeds
	[ -d "$grown" ] && corpora="$grown $seeds"
	inputs=$(find $corpora -type f | wc -l)
	rm -f "$dir/$n.profraw" "$dir/$n.profdata"
	echo "== $n: replaying $inputs inputs ($corpora)"
	# shellcheck disable=SC2086
	LLVM_PROFILE_FILE="$dir/$n.profraw" "$bin" -runs=0 -timeout=10 -rss_limit_mb=2048 \
		$corpora >"$dir/$n.log" 2>&1 || {
		tail -30 "$dir/$n.log"
		echo "coverage.sh: $n failed replaying its corpus (log: $dir/$n.log)" >&2
		exit 1
	}
	"$profdata" merge -sparse "$dir/$n.profraw" -o "$dir/$n.profdata"
	# shellcheck disable=SC2086
	"$cov" report "$bin" -instr-profile="$dir/$n.profdata" -show-region-summary=false \
		$files | tee "$dir/$n.report"
	# Columns without regions: Filename, Functions, Missed, Executed, Lines,
	# Missed, Cover, Branches, Missed, Cover.
	awk -v n="$n" -v inputs="$inputs" -v files="$files" '
		$1 == "TOTAL" { total = $0 }
		NF == 10 && $1 != "Filename" && $1 != "TOTAL" { one = $0 }
		END {
			split(total != "" ? total : one, f)
			printf "%-16s lines %s (%d/%d)  branches %s (%d/%d)  %d inputs  [%s]\n",
			    n, f[7], f[5] - f[6], f[5], f[10], f[8] - f[9], f[8], inputs, files
		}' "$dir/$n.report" >>"$summary"
done

echo "== fuzz coverage of each harness's target files (line, branch; covered/total)"
cat "$summary"
