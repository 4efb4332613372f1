# ci/board/lib.sh — shared helpers for the emulated arm64 board (sourced, not run).
# Everything downloaded or built is cached under $CACHE; every function is idempotent.
# shellcheck shell=bash
shopt -s inherit_errexit   # set -e also inside $(...)

CACHE=${PINVMM_CACHE:-$HOME/.cache/pinvmm}
BOARD_CACHE=$CACHE/board
APT_SOURCES=/etc/apt/sources.list.d/pinvmm-board.sources
APT_PREFS=/etc/apt/preferences.d/pinvmm-board

# name -> Debian package (suite). Debian keeps one version per package name (the ABI is in
# the name), so a name that vanished from the archive is an error, not a silent change.
declare -A KPKG=(
  [6.1]=linux-image-6.1.0-56-arm64-unsigned          # bookworm-security, has the upstream GUP fix
  [6.12.43]=linux-image-6.12.43+deb12-arm64          # bookworm-backports, WITHOUT the GUP fix
  [6.12.118]=linux-image-6.12.118+deb13-arm64-unsigned # trixie-security, fixed
  [7.3]=linux-binary-7.3.4+deb13-arm64               # trixie-backports, fixed; real pKVM protected VMs
)
# shellcheck disable=SC2034  # read by the scripts that source this file
declare -A KSUITE=([6.1]=bookworm-security [6.12.43]=bookworm-backports
                   [6.12.118]=trixie-security [7.3]=trixie-backports)
KERNEL_NAMES="6.1 6.12.43 6.12.118 7.3"

log() { printf '%s: %s\n' "${PROG:-board}" "$*" >&2; }
die() { printf '%s: error: %s\n' "${PROG:-board}" "$*" >&2; exit "${DIE_RC:-1}"; }
apt_get() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q "$@"; }
need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (apt-get); run as root or do it by hand"; }

# The host's own apt sources (not ours), deb822 and one-line style.
host_sources() { local f; for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] && [ "$f" != "$APT_SOURCES" ] && echo "$f"; done; return 0; }
host_suites() {  # the suites the host already lists, one per line
  local f
  for f in $(host_sources); do case $f in
    *.sources) awk '/^Suites:/ {for (i = 2; i <= NF; i++) print $i}' "$f" ;;
    *) awk '$1 == "deb" { print ($2 ~ /^\[/) ? $4 : $3 }' "$f" ;;
  esac; done
}
host_mirror() {  # the Debian mirror the host already uses, e.g. http://deb.debian.org/debian
  local f
  for f in $(host_sources); do case $f in
    *.sources) awk '/^URIs:/ {print $2}' "$f" ;;
    *) awk '$1 == "deb" { print ($2 ~ /^\[/) ? $3 : $2 }' "$f" ;;
  esac; done | grep -E '/debian/?$' | grep -v security | head -1 || true
}

# apt sources for bookworm(-backports/-security) and trixie(-security/-backports), arm64 (plus
# amd64 for the host's own backports, for QEMU), pinned low so the host is never upgraded from them.
ensure_apt_sources() {
  local mirror host s entries="" changed=0
  mirror=$(host_mirror)
  [ -n "$mirror" ] || die "cannot find the host's Debian mirror in /etc/apt/sources.list*"
  mirror=${mirror%/}
  host=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  for s in bookworm bookworm-backports bookworm-security trixie trixie-backports trixie-security; do
    if host_suites | grep -x "$s" >/dev/null; then continue; fi
    local uri=$mirror archs=arm64
    case $s in *-security) uri=${mirror%/debian}/debian-security ;; esac
    [ "$s" = "$host-backports" ] && archs="amd64 arm64"
    entries+="Types: deb
URIs: $uri
Suites: $s
Components: main
Architectures: $archs
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

"
  done
  local src="# Written by pinvmm ci/board (lib.sh): arm64 kernels + busybox for the emulated board,
# QEMU from backports. Pinned low in $APT_PREFS.

$entries"
  local prefs="# Written by pinvmm ci/board (lib.sh): never upgrade the host from these suites.
# ('apt-get download NAME' still works: a package with a single candidate is taken at any priority > 0.)
Package: *
Pin: release n=trixie
Pin-Priority: 1

Package: *
Pin: release n=trixie-security
Pin-Priority: 1

Package: *
Pin: release n=trixie-backports
Pin-Priority: 1

Package: *
Pin: release n=bookworm-backports
Pin-Priority: 50
"
  cmp -s "$APT_SOURCES" <(printf '%s' "$src") || changed=1
  cmp -s "$APT_PREFS" <(printf '%s' "$prefs") || changed=1
  dpkg --print-foreign-architectures | grep -x arm64 >/dev/null || changed=1
  [ -f "$BOARD_CACHE/.apt-updated" ] || changed=1
  [ "$changed" = 1 ] || return 0
  need_root "adding the arm64 apt sources"
  log "configuring $APT_SOURCES + $APT_PREFS (arm64, pinned low) and running apt-get update"
  dpkg --print-foreign-architectures | grep -x arm64 >/dev/null || dpkg --add-architecture arm64
  printf '%s' "$src" > "$APT_SOURCES"
  printf '%s' "$prefs" > "$APT_PREFS"
  apt_get update >&2 || die "apt-get update failed (see above)"
  mkdir -p "$BOARD_CACHE"; touch "$BOARD_CACHE/.apt-updated"
}

# apt_fetch PKG DIR — 'apt-get download' PKG (no install) and unpack it with dpkg-deb -x into DIR.
# Serialized with flock, so parallel board runs can share a cold cache.
apt_fetch() {
  mkdir -p "$CACHE"
  ( flock 9; apt_fetch_locked "$@" ) 9> "$CACHE/.fetch.lock"
}
apt_fetch_locked() {
  local pkg=$1 dir=$2 debs=$CACHE/debs deb arch='*'
  # NAME:ARCH only takes a .deb of that architecture (busybox-static:arm64 and :amd64 share a name).
  case $pkg in *:*) arch=${pkg#*:} ;; esac
  # .unpacked names the .deb it came from: a changed package name fetches again.
  # shellcheck disable=SC2254  # $arch is a pattern on purpose
  case "$(cat "$dir/.unpacked" 2>/dev/null)" in "${pkg%%:*}"_*_$arch.deb) return 0 ;; esac
  ensure_apt_sources
  mkdir -p "$debs"
  # shellcheck disable=SC2086
  deb=$(ls "$debs/${pkg%%:*}"_*_$arch.deb 2>/dev/null | head -1 || true)
  if [ -z "$deb" ]; then
    log "downloading $pkg"
    if ! (cd "$debs" && apt-get -q download "$pkg" >&2 2>"$debs/.err") || grep -q '^E:' "$debs/.err"; then
      cat "$debs/.err" >&2
      local name=${pkg%%:*} series
      series=$(sed -E 's/^([a-z-]+-[0-9]+\.[0-9]+\.).*/\1/' <<<"$name")
      { echo "apt-cache policy $pkg:"; apt-cache policy "$pkg"
        echo "apt-cache madison of the packages named like '$series*' for arm64 (newest last):"
        apt-cache search --names-only "^${series//./\\.}" | cut -d' ' -f1 | grep -- '-arm64' | grep -vE 'dbg|cloud|rt-arm64|16k' |
          sort -V | tail -n 6 | xargs -r apt-cache madison | grep arm64 || true
      } >&2 2>&1
      die "cannot download $pkg: it is not in the configured archives (moved or removed?).
  If the archive now has a newer ABI (see above), put its name into KPKG in ci/board/lib.sh."
    fi
    # shellcheck disable=SC2086
    deb=$(ls "$debs/${pkg%%:*}"_*_$arch.deb | head -1)
  fi
  rm -rf "$dir.tmp"; mkdir -p "$dir.tmp"
  dpkg-deb -x "$deb" "$dir.tmp"
  rm -rf "$dir"; mv "$dir.tmp" "$dir"
  echo "$(basename "$deb")" > "$dir/.unpacked"
}

# kernel_image NAME|PATH — prints the path of the arm64 Image (fetching it if needed).
kernel_image() {
  local name=$1
  if [ -f "$name" ]; then
    case "$(file -L "$name")" in
      *"ARM64 boot executable Image"*|*"gzip compressed"*) echo "$name"; return ;;
      *) die "$name is not an arm64 kernel Image: $(file -Lb "$name")" ;;
    esac
  fi
  [ -n "${KPKG[$name]:-}" ] || die "unknown kernel '$name' (known: $KERNEL_NAMES, or a path to an Image)"
  local dir=$BOARD_CACHE/kernels/$name img
  apt_fetch "${KPKG[$name]}:arm64" "$dir"
  img=$(ls "$dir"/boot/vmlinuz-* "$dir"/usr/lib/modules/*/vmlinuz 2>/dev/null | head -1 || true)
  [ -n "$img" ] || die "no vmlinuz in $dir (package ${KPKG[$name]} changed its layout?)"
  echo "$img"
}

busybox_bin() {
  local dir=$BOARD_CACHE/busybox-static
  apt_fetch busybox-static:arm64 "$dir"
  [ -x "$dir/bin/busybox" ] || die "no bin/busybox in busybox-static:arm64"
  echo "$dir/bin/busybox"
}

# ensure_qemu CPU — qemu-system-aarch64 that knows CPU (neoverse-n2 needs QEMU >= 8.2;
# bookworm has 7.2, bookworm-backports 10.0).
ensure_qemu() {
  local cpu=$1
  qemu_has_cpu "$cpu" && return 0
  need_root "installing qemu-system-arm"
  ensure_apt_sources
  local host; host=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  log "installing qemu-system-arm (from $host-backports if it has it) for -cpu $cpu"
  if apt-cache policy qemu-system-arm | grep "$host-backports" >/dev/null; then
    # The pin (50) keeps backports out of upgrades; select the QEMU packages explicitly.
    local p pkgs=()
    for p in qemu-system-arm qemu-system-common qemu-system-data; do pkgs+=("$p/$host-backports"); done
    apt_get install -y --no-install-recommends "${pkgs[@]}" >&2 || die "apt-get install qemu-system-arm failed"
  else
    apt_get install -y --no-install-recommends qemu-system-arm >&2 || die "apt-get install qemu-system-arm failed"
  fi
  qemu_has_cpu "$cpu" || die "$(qemu-system-aarch64 --version | head -1) has no -cpu $cpu; try --cpu max (with --append arm64.nomops) or cortex-a72"
}
qemu_has_cpu() {
  command -v qemu-system-aarch64 >/dev/null &&
    qemu-system-aarch64 -machine virt -cpu help 2>/dev/null | awk '{print $1}' | grep -x "$1" >/dev/null
}

ensure_host_tools() {  # cpio for the initramfs, file for checking --bin files
  local p missing=()
  for p in cpio file; do command -v "$p" >/dev/null || missing+=("$p"); done
  [ ${#missing[@]} = 0 ] && return 0
  need_root "installing ${missing[*]}"
  apt_get install -y --no-install-recommends "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
}
