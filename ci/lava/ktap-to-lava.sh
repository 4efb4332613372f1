#!/bin/sh
# ktap-to-lava.sh PREFIX [FILE] — report each test of a KTAP v1 document as one LAVA test case.
#
#   ok N NAME               -> lava-test-case PREFIX_NAME --result pass
#   not ok N NAME           -> ... --result fail
#   ok N NAME # SKIP why    -> ... --result skip
# A diagnostic line "# NAME: ... rate R ..." before the test line (what `pinvmm campaign --ktap`
# prints per cell) adds "--measurement R --units ratio". NAME is made LAVA-safe ([-_.a-zA-Z0-9],
# so shmem/none becomes shmem_none). One more case, PREFIX_ktap, fails when the document has
# no "KTAP version 1" header or fewer test lines than its plan "1..N" promised (a cut-off run).
#
# POSIX sh + awk: runs under busybox. Outside LAVA (no lava-test-case in PATH) it prints the
# calls it would make; $LAVA_TEST_CASE overrides the command (the tests use that).
# Exit status: 0 when every case was reported, 1 when the KTAP was missing or incomplete.
set -u
prefix=${1:?usage: ktap-to-lava.sh PREFIX [FILE]}
file=${2:--}
if [ -n "${LAVA_TEST_CASE:-}" ]; then ltc=$LAVA_TEST_CASE
elif command -v lava-test-case >/dev/null 2>&1; then ltc=lava-test-case
else ltc="echo lava-test-case"; fi

cases=$(awk '
  function safe(s) { gsub(/[^-_.a-zA-Z0-9]/, "_", s); return s }
  /^KTAP version 1/ { header = 1; next }
  /^1\.\.[0-9]+/ { plan = substr($0, 4) + 0; next }
  /^# [^ ]+: / && / rate [0-9.]+/ {
    name = substr($2, 1, length($2) - 1)
    r = substr($0, index($0, " rate ") + 6); sub(/[^0-9.].*/, "", r); rate[name] = r; next
  }
  /^(not )?ok [0-9]+ / {
    res = ($1 == "not") ? "fail" : "pass"
    line = $0; sub(/^(not )?ok [0-9]+ /, "", line)
    if (line ~ /# *SKIP/) res = "skip"
    sub(/ *#.*/, "", line)
    m = (line in rate) ? rate[line] : "-"
    print safe(line), res, m; seen++
  }
  END { print "@ktap", (header && plan > 0 && seen >= plan) ? "pass" : "fail", seen "/" plan }
' "$file")

status=0
echo "$cases" | while read -r name res rate; do
  case $name in
    @ktap)
      $ltc "${prefix}_ktap" --result "$res"
      echo "ktap-to-lava: $prefix: $rate test lines of the plan"
      [ "$res" = pass ] || exit 1 ;;
    *)
      if [ "$rate" = - ]; then $ltc "${prefix}_$name" --result "$res"
      else $ltc "${prefix}_$name" --result "$res" --measurement "$rate" --units ratio; fi ;;
  esac
done || status=1
exit $status
