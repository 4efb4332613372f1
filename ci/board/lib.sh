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
# The x86_64 board (ci/board/run --arch amd64): the same kernel versions as Debian amd64 packages.
# Their KVM (kvm_amd) is a module: the board loads it and its dependencies from the package.
declare -A KPKG_AMD64=(
  [6.1]=linux-image-6.1.0-57-amd64-unsigned          # bookworm-security, 6.1.192, has the upstream GUP fix
  [6.12.43]=linux-image-6.12.43+deb12-amd64          # bookworm-backports, WITHOUT the GUP fix
  [6.12.118]=linux-image-6.12.118+deb13-amd64-unsigned # trixie-security, fixed
)
# shellcheck disable=SC2034  # read by the scripts that source this file
declare -A KSUITE_AMD64=([6.1]=bookworm-security [6.12.43]=bookworm-backports [6.12.118]=trixie-security)
KERNEL_NAMES_AMD64="6.1 6.12.43 6.12.118"

# board_arch ARCH — the board's architecture, normalized (arm64|amd64), or die.
board_arch() {
  case $1 in
    arm64|aarch64) echo arm64 ;;
    amd64|x86_64|x86) echo amd64 ;;
    *) die "unknown architecture '$1' (arm64 or amd64)" ;;
  esac
}
# kernel_names ARCH — the board kernel names of ARCH.
kernel_names() { if [ "$(board_arch "$1")" = amd64 ]; then echo "$KERNEL_NAMES_AMD64"; else echo "$KERNEL_NAMES"; fi; }
# kernel_pkg ARCH NAME / kernel_suite ARCH NAME — the Debian package of a board kernel (empty: unknown).
kernel_pkg() { if [ "$(board_arch "$1")" = amd64 ]; then echo "${KPKG_AMD64[$2]:-}"; else echo "${KPKG[$2]:-}"; fi; }
kernel_suite() { if [ "$(board_arch "$1")" = amd64 ]; then echo "${KSUITE_AMD64[$2]:-}"; else echo "${KSUITE[$2]:-}"; fi; }

log() { printf '%s: %s\n' "${PROG:-board}" "$*" >&2; }
die() { printf '%s: error: %s\n' "${PROG:-board}" "$*" >&2; exit "${DIE_RC:-1}"; }
apt_get() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q "$@"; }
# need_root WHAT [HOW] — die unless root, saying what needed root and how to do it by hand.
need_root() {
  [ "$(id -u)" = 0 ] && return 0
  die "$1 needs root (apt). Run this as root, or first, as root: ${2:-ci/test --setup (installs everything ci/, guest/ and tests/ use)}"
}

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

# ---- apt. Every install of ci/, guest/ and tests/ goes through apt_install or qemu_install:
# they take a lock (parallel tests install at once), run 'apt-get update' first when a
# configured suite has no package lists yet (a new machine, or a source just added), and once
# more before a second try when the install fails (stale lists: the archive replaced a .deb).

# apt_locked CMD... — run CMD holding pinvmm's apt lock ($CACHE/.apt.lock); re-entrant.
apt_locked() {
  if [ "${APT_LOCK_HELD:-0}" = 1 ]; then "$@"; return; fi
  mkdir -p "$CACHE"
  ( exec 8>"$CACHE/.apt.lock"; flock 8; APT_LOCK_HELD=1; "$@" )
}
# apt_lists_ready — every suite in the apt sources has its Release file and its package lists
# for every dpkg architecture (a source or an architecture just added has none). One apt call:
# each costs ~2 s here, as the image disables apt's binary cache.
apt_lists_ready() {
  local f comp arch
  while read -r f comp arch; do
    [ "$arch" = all ] && continue   # Debian's Release files leave binary-all out
    compgen -G "${f%%_"$comp"_*}_*Release" >/dev/null && compgen -G "$f*" >/dev/null || return 1
  done < <(apt-get indextargets --no-release-info --format '$(FILENAME) $(COMPONENT) $(ARCHITECTURE)' 'Identifier: Packages')
}
apt_update() {
  log "apt-get update"
  apt_get update >&2 || die "apt-get update failed (see above): check the sources in /etc/apt/sources.list* and the network"
}
pkg_installed() { [ "$(dpkg-query -W -f '${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

# apt_get_install SPEC... — 'apt-get install --no-install-recommends SPEC...' (SPEC: NAME,
# NAME:ARCH or NAME/SUITE), lists updated first if missing and once more after a failure.
apt_get_install() { need_root "installing $*" "apt-get update && apt-get install --no-install-recommends $*"; apt_locked apt_get_install_locked "$@"; }
apt_get_install_locked() {
  apt_lists_ready || apt_update
  log "apt-get install $*"
  apt_get install -y --no-install-recommends "$@" >&2 && return 0
  log "apt-get install $* failed; updating the package lists and trying once more"
  apt_update
  apt_get install -y --no-install-recommends "$@" >&2 ||
    die "apt-get install $* failed (see above; 'apt-cache policy NAME' shows which suites have NAME)"
}
# apt_install PKG... — install those of PKG (from the host's own suites) that are not installed.
apt_install() {
  local p missing=()
  for p; do pkg_installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} = 0 ] || apt_get_install "${missing[@]}"
}
# ensure_commands CMD:PKG... — apt_install PKG for each CMD that is not on PATH.
ensure_commands() {
  local c pkgs=()
  for c; do command -v "${c%%:*}" >/dev/null || pkgs+=("${c#*:}"); done
  [ ${#pkgs[@]} = 0 ] || apt_install "${pkgs[@]}"
}

# apt sources for bookworm(-backports/-security) and trixie(-security/-backports), arm64 (plus
# amd64 for the host's own backports, for QEMU and the x86 board's 6.12.43, and for
# trixie-security, for the x86 board's 6.12.118), pinned low so the host is never upgraded from
# them (trixie* at 1: only a package no other suite has, named explicitly, comes from there).
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
    [ "$s" = trixie-security ] && archs="amd64 arm64"   # amd64 kernels for the x86 board
    entries+="Types: deb
URIs: $uri
Suites: $s
Components: main
Architectures: $archs
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

"
  done
  local src="# Written by pinvmm ci/board (lib.sh): arm64 kernels + busybox for the emulated board,
# amd64 kernels for the x86 board, QEMU from backports. Pinned low in $APT_PREFS.

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
  if [ "$changed" = 0 ]; then apt_lists_ready && return 0; fi
  need_root "adding the arm64 apt sources and bookworm-backports ($APT_SOURCES)"
  apt_locked ensure_apt_sources_locked "$src" "$prefs"
}
ensure_apt_sources_locked() {
  if ! cmp -s "$APT_SOURCES" <(printf '%s' "$1") || ! cmp -s "$APT_PREFS" <(printf '%s' "$2") ||
     ! dpkg --print-foreign-architectures | grep -x arm64 >/dev/null; then
    log "configuring $APT_SOURCES + $APT_PREFS (arm64, pinned low)"
    dpkg --print-foreign-architectures | grep -x arm64 >/dev/null || dpkg --add-architecture arm64
    printf '%s' "$1" > "$APT_SOURCES"
    printf '%s' "$2" > "$APT_PREFS"
    apt_update
  else
    apt_lists_ready || apt_update
  fi
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
        local ka=arm64; [ "$arch" = '*' ] || ka=$arch
        echo "apt-cache madison of the packages named like '$series*' for $ka (newest last):"
        apt-cache search --names-only "^${series//./\\.}" | cut -d' ' -f1 | grep -- "-$ka" | grep -vE "dbg|cloud|rt-$ka|16k" |
          sort -V | tail -n 6 | xargs -r apt-cache madison | grep "$ka" || true
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

# kernel_image NAME|PATH [ARCH] — prints the path of the board kernel (arm64: the Image, default;
# amd64: the bzImage), fetching its package if needed.
kernel_image() {
  local name=$1 arch; arch=$(board_arch "${2:-arm64}")
  if [ -f "$name" ]; then
    case "$arch:$(file -L "$name")" in
      arm64:*"ARM64 boot executable Image"*|arm64:*"gzip compressed"*) echo "$name"; return ;;
      amd64:*"Linux kernel x86 boot executable bzImage"*) echo "$name"; return ;;
      arm64:*) die "$name is not an arm64 kernel Image: $(file -Lb "$name")" ;;
      *) die "$name is not an x86 bzImage: $(file -Lb "$name")" ;;
    esac
  fi
  local pkg; pkg=$(kernel_pkg "$arch" "$name")
  [ -n "$pkg" ] || die "unknown $arch kernel '$name' (known: $(kernel_names "$arch"), or a path to an $([ "$arch" = amd64 ] && echo bzImage || echo Image))"
  local dir=$BOARD_CACHE/kernels/$name img
  [ "$arch" = arm64 ] || dir=$BOARD_CACHE/kernels-$arch/$name
  apt_fetch "$pkg:$arch" "$dir"
  img=$(ls "$dir"/boot/vmlinuz-* "$dir"/usr/lib/modules/*/vmlinuz 2>/dev/null | head -1 || true)
  [ -n "$img" ] || die "no vmlinuz in $dir (package $pkg changed its layout?)"
  echo "$img"
}

# kernel_modules IMAGE MODULE... — the .ko files (decompressed, in load order: dependencies
# first) of MODULE... and everything they depend on, from the kernel package IMAGE came from
# (its usr/lib/modules/VERSION/). Prints one path per line; they are cached next to the package
# (DIR/.ko/). Dependencies come from each module's own modinfo 'depends=' field (Debian's
# packages ship no modules.dep). Dies if a module is not in the package.
kernel_modules() {
  local image=$1; shift
  local pkgdir moddir out ver
  pkgdir=$(cd "$(dirname "$image")/.." && pwd)          # DIR/boot/vmlinuz-VER -> DIR
  ver=$(basename "$image"); ver=${ver#vmlinuz-}
  moddir=$pkgdir/usr/lib/modules/$ver
  [ -d "$moddir" ] || moddir=$pkgdir/lib/modules/$ver
  [ -d "$moddir" ] || die "no modules directory for $ver in $pkgdir (a self-built kernel? build KVM in: CONFIG_KVM=y, CONFIG_KVM_AMD=y)"
  out=$pkgdir/.ko; mkdir -p "$out"
  local -A seen=()
  local order=()
  add_module() {   # depth-first: dependencies first
    local m=${1//-/_} f dep deps
    [ -z "${seen[$m]:-}" ] || return 0
    seen[$m]=1
    f=$(find "$moddir" \( -name "$m.ko*" -o -name "${m//_/-}.ko*" \) | head -1)
    [ -n "$f" ] || die "module $m is not in $moddir"
    if [ ! -f "$out/$m.ko" ]; then
      case $f in
        *.ko.xz) xz -dc "$f" > "$out/$m.ko.tmp" ;;
        *.ko.zst) zstd -qdc "$f" > "$out/$m.ko.tmp" ;;
        *.ko.gz) gzip -dc "$f" > "$out/$m.ko.tmp" ;;
        *) cp "$f" "$out/$m.ko.tmp" ;;
      esac
      mv "$out/$m.ko.tmp" "$out/$m.ko"
    fi
    deps=$(tr '\0' '\n' < "$out/$m.ko" | sed -n 's/^depends=//p' | head -1)
    for dep in ${deps//,/ }; do add_module "$dep"; done
    order+=("$out/$m.ko")
  }
  local m
  for m; do add_module "$m"; done
  printf '%s\n' "${order[@]}"
}

# busybox_bin [ARCH] — a static busybox for the board (default arm64).
busybox_bin() {
  local arch dir; arch=$(board_arch "${1:-arm64}")
  dir=$BOARD_CACHE/busybox-static
  [ "$arch" = arm64 ] || dir=$BOARD_CACHE/busybox-static-$arch
  apt_fetch "busybox-static:$arch" "$dir"
  [ -x "$dir/bin/busybox" ] || die "no bin/busybox in busybox-static:$arch"
  echo "$dir/bin/busybox"
}

# ---- QEMU. All of QEMU (every binary package of Debian's source package 'qemu': qemu-system-arm,
# qemu-system-x86, qemu-system-common, qemu-system-data, qemu-user, qemu-utils, ...) comes from ONE
# suite, QEMU's suite: the host's backports when it has QEMU (bookworm-backports: 10.0; bookworm's
# 7.2 lacks -cpu neoverse-n2), else the host's own. apt refuses to mix them (qemu-system-x86 7.2
# needs qemu-system-common 7.2 exactly), so qemu_install takes the packages asked for, every QEMU
# package already installed and the firmware that must match (seabios) from that suite in one
# 'apt-get install', selected explicitly as NAME/SUITE (backports is pinned at 50 in $APT_PREFS, so
# nothing else is upgraded from it). An installed older QEMU (e.g. bookworm's 7.2) is upgraded.
QEMU_MIN=1:8.2   # -cpu neoverse-n2

qemu_installed() {  # NAME SOURCE-VERSION of every installed package built from the qemu source
  dpkg-query -W -f '${binary:Package} ${source:Package} ${source:Version} ${db:Status-Abbrev}\n' 2>/dev/null |
    awk '$2 == "qemu" && $4 ~ /^.i/ {sub(/:.*/, "", $1); print $1, $3}'
}
# qemu_consistent PKG... — PKG are installed, all QEMU packages come from one source version >= QEMU_MIN.
qemu_consistent() {
  local inst p vers
  inst=$(qemu_installed)
  for p; do grep -q "^$p " <<<"$inst" || return 1; done
  vers=$(awk '{print $2}' <<<"$inst" | sort -u)
  [ "$(wc -l <<<"$vers")" = 1 ] && dpkg --compare-versions "$vers" ge "$QEMU_MIN"
}
in_suite() {  # in_suite SUITE PKG... — those PKG the apt lists have in SUITE, one per line (one apt call)
  local suite=$1; shift
  apt-cache madison "$@" 2>/dev/null | awk -F'|' -v s="$suite" '$3 ~ " " s "/" {gsub(/ /, "", $1); print $1}' | sort -u
}
qemu_suite() {
  local host; host=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  if [ -n "$(in_suite "$host-backports" qemu-system-common)" ]; then echo "$host-backports"; else echo "$host"; fi
}
# qemu_install PKG... — PKG (binary packages of the qemu source) installed from QEMU's suite.
qemu_install() {
  qemu_consistent "$@" && return 0
  need_root "installing QEMU ($*, from one suite: see ci/board/lib.sh)"
  ensure_apt_sources
  apt_locked qemu_install_locked "$@"
}
qemu_install_locked() {
  qemu_consistent "$@" && return 0   # another process did it while we waited for the lock
  local suite p specs=() want avail
  suite=$(qemu_suite)
  # Asked for + installed + what must match: the system emulators need their -common and -data
  # of the same version; qemu-system-x86 10.0 needs seabios >> 1.16.3 (only in backports);
  # qemu-user-static 10.0 needs qemu-user and qemu-user-binfmt of its version.
  want=$( { printf '%s\n' "$@"; qemu_installed | awk '{print $1}'; } | sort -u)
  grep -q '^qemu-system-' <<<"$want" && want+=$'\nqemu-system-common\nqemu-system-data'
  grep -q '^qemu-user-' <<<"$want" && want+=$'\nqemu-user'
  grep -qx 'qemu-user-static' <<<"$want" && want+=$'\nqemu-user-binfmt'
  grep -qx 'qemu-system-x86' <<<"$want" && want+=$'\nseabios'
  want=$(sort -u <<<"$want")
  # shellcheck disable=SC2086  # package names
  avail=$(in_suite "$suite" $want)
  for p in $want; do
    if grep -qx -- "$p" <<<"$avail"; then specs+=("$p/$suite")
    elif pkg_installed "$p"; then :   # not in that suite (renamed?): apt keeps or replaces it
    else specs+=("$p"); fi
  done
  log "installing QEMU from $suite: ${specs[*]}"
  apt_get_install_locked "${specs[@]}"
  qemu_consistent "$@" || die "QEMU packages are still mixed or missing after the install (suite $suite):
$(qemu_installed)
  Install them all from one suite: apt-get install $(qemu_installed | awk -v s="$suite" '{printf "%s/%s ", $1, s}')"
}

# ensure_qemu_system ARCH [CPU] — qemu-system-ARCH (arm64|aarch64, amd64|x86_64) from QEMU's suite,
# and, with CPU, one that knows -cpu CPU (neoverse-n2 needs QEMU >= 8.2).
ensure_qemu_system() {
  local arch=$1 cpu=${2:-} pkg bin machine
  case $arch in
    arm64|aarch64) pkg=qemu-system-arm bin=qemu-system-aarch64 machine=virt ;;
    amd64|x86_64) pkg=qemu-system-x86 bin=qemu-system-x86_64 machine=pc ;;
    *) die "ensure_qemu_system: unknown architecture '$arch' (arm64 or amd64)" ;;
  esac
  qemu_install "$pkg"
  command -v "$bin" >/dev/null || die "$pkg is installed but $bin is not on PATH ($PATH)"
  [ -z "$cpu" ] || qemu_has_cpu "$bin" "$machine" "$cpu" ||
    die "$("$bin" --version | head -1) has no -cpu $cpu; try --cpu max (with --append arm64.nomops) or cortex-a72"
}
qemu_has_cpu() {  # BIN MACHINE CPU (arm lists "  NAME", x86 "x86 NAME  description")
  "$1" -machine "$2" -cpu help 2>/dev/null | awk '{print $1; if ($1 == "x86") print $2}' | grep -qx "$3"
}

# cpio for the initramfs, file for checking --bin files, bc for timings
ensure_host_tools() { ensure_commands cpio:cpio file:file bc:bc; }
