#!/bin/sh
# board-steps.sh — the board-side steps of ci/lava/pinvmm-campaign.yaml (POSIX sh, busybox-ok).
#
#   board-steps.sh install          find or fetch the static aarch64 pinvmm; prints its directory
#   board-steps.sh publish DIR      the campaign directory DIR as an artifact (see below)
#
# install looks, in order, at: $PINVMM_URL (a .tar.gz holding bin/pinvmm, or the bare binary;
# fetched with wget or curl), /opt/pinvmm/bin (where the jobs' ramdisk overlay unpacks
# pinvmm-aarch64.tar.gz), then $PATH.
# publish prints DIR/summary.json to the log, then the whole DIR as a base64 tar.gz between
# "@@PINVMM-LAVA results-begin" / "@@PINVMM-LAVA results-end" (ci/lava/fetch-results cuts it out
# of a LAVA log, for `pinvmm report`), and, when $ARTIFACT_URL is set, PUTs the tar.gz there with
# curl and records a lava-test-reference to it.
set -u
fetch() { # URL FILE
  if command -v wget >/dev/null 2>&1; then wget -q -O "$2" "$1"
  elif command -v curl >/dev/null 2>&1; then curl -fsSL -o "$2" "$1"
  else echo "board-steps: neither wget nor curl to fetch $1" >&2; return 1; fi
}
case ${1:-} in
  install)
    if [ -n "${PINVMM_URL:-}" ]; then
      d=/tmp/pinvmm; mkdir -p "$d/bin"
      fetch "$PINVMM_URL" "$d/dl" || exit 1
      if gzip -t "$d/dl" 2>/dev/null; then tar -xzf "$d/dl" -C "$d" || exit 1
      else mv "$d/dl" "$d/bin/pinvmm"; fi
      rm -f "$d/dl"; chmod 755 "$d/bin/pinvmm"; echo "$d/bin"
    elif [ -x /opt/pinvmm/bin/pinvmm ]; then echo /opt/pinvmm/bin
    elif p=$(command -v pinvmm); then dirname "$p"
    else echo "board-steps: no pinvmm: set PINVMM_URL or deploy the pinvmm overlay" >&2; exit 1; fi ;;
  publish)
    dir=${2:?usage: board-steps.sh publish DIR}
    [ -f "$dir/summary.json" ] && { echo "--- $dir/summary.json"; cat "$dir/summary.json"; echo; echo "---"; }
    tgz=/tmp/pinvmm-results.tar.gz
    tar -czf "$tgz" -C "$(dirname "$dir")" "$(basename "$dir")" || exit 1
    echo "@@PINVMM-LAVA results-begin $(basename "$dir")"
    base64 "$tgz"
    echo "@@PINVMM-LAVA results-end"
    if [ -n "${ARTIFACT_URL:-}" ]; then
      url=${ARTIFACT_URL%/}/pinvmm-results.tar.gz
      if curl -fsS -T "$tgz" "$url"; then
        lava-test-reference pinvmm-results --result pass --reference "$url"
      else
        lava-test-case pinvmm-results-upload --result fail
      fi
    fi ;;
  *) echo "usage: board-steps.sh install | publish DIR" >&2; exit 2 ;;
esac
