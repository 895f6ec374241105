#!/usr/bin/env bash
# scripts/setup.sh — make this Debian 12 machine able to build and test joule.
#
# Runs at the start of every `make build` / `make test`. When everything is already in
# place it only reads dpkg's database, pkg-config and one checksum, and prints one line.
#
#   1. Debian packages: installs the missing ones (apt-get update first, only then).
#   2. OpenBLAS: pkg-config `openblas` (what we link, -lopenblas) and the runtime
#      libopenblas.so.0 must be the OpenMP build, so BLAS and our OpenMP loops share
#      libgomp's thread pool. If the alternatives point elsewhere, they are set back.
#      The generic libblas/liblapack/cblas alternatives are never linked, so they don't matter.
#   3. FAISS C API: Debian's libfaiss-dev ships the C API headers and the C++ libfaiss.a
#      but no compiled C API. We build libfaiss_c.so from Debian's own faiss source
#      package (same version as the installed libfaiss-dev), against the installed
#      headers and libfaiss.a, in a temporary directory, and install it in /usr/local/lib
#      with a stamp that records what was built (a stale or damaged install is rebuilt).
#
# Not root and something missing: prints what is missing and the command to run, exits 1.
set -euo pipefail

# strace: the fault tests kill joule at chosen system calls; clang, its libFuzzer and
# sanitizer runtimes (libclang-rt-14-dev) and OpenMP (libomp-14-dev): the fuzz targets.
# Open MPI (libopenmpi-dev, openmpi-bin): multi-process training, search and comparisons.
# libmicrohttpd: the HTTP front of `joule serve`. curl: the serve tests' error cases.
PACKAGES=(cmake pkg-config gcc g++ make libopenblas-openmp-dev check libcjson-dev zlib1g-dev
          libfaiss-dev dict-gcide fortunes dpkg-dev strace clang libclang-rt-14-dev libomp-14-dev
          libopenmpi-dev openmpi-bin libmicrohttpd-dev curl)
PREFIX=/usr/local
LIBDIR=$PREFIX/lib
STAMP=$LIBDIR/libfaiss_c.stamp
SRC_LIST=/etc/apt/sources.list.d/joule-src.sources
# Bump when the FAISS C API build recipe below changes: every machine then rebuilds.
FAISS_C_RECIPE=1

SELF=$(readlink -f "${BASH_SOURCE[0]}")

say() { echo "setup.sh: $*"; }
die() { echo "setup.sh: error: $*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }
need_root() { # what-for
  is_root && return 0
  echo "setup.sh: $1 needs root. Run:  sudo bash scripts/setup.sh" >&2
  exit 1
}

# Slow paths change the system: take a lock (other builds may run setup.sh at the same
# time), then start over so every decision is re-made under the lock.
lock_and_restart() {
  [ -n "${JOULE_SETUP_LOCKED:-}" ] && return 0
  local lockdir=/run/lock; [ -d "$lockdir" ] && [ -w "$lockdir" ] || lockdir=/tmp
  exec 9>> "$lockdir/joule-setup.lock"
  flock 9
  JOULE_SETUP_LOCKED=1 exec bash "$SELF" "$@"
}

# --- 1. Debian packages --------------------------------------------------------------
declare -A STATUS=() VERSION=() SRCVERSION=()
find_missing() {
  STATUS=(); VERSION=(); SRCVERSION=(); missing=()
  local pkg st ver srcver p
  while read -r pkg st ver srcver; do
    STATUS[$pkg]=$st; VERSION[$pkg]=$ver; SRCVERSION[$pkg]=$srcver
  done < <(dpkg-query -W -f='${Package} ${db:Status-Abbrev} ${Version} ${source:Version}\n' \
             "${PACKAGES[@]}" 2>/dev/null || true)
  for p in "${PACKAGES[@]}"; do
    st=${STATUS[$p]:-}
    [ "${st:1:1}" = i ] || missing+=("$p")   # 2nd letter of the status abbreviation: installed
  done
}
find_missing
if [ ${#missing[@]} -gt 0 ]; then
  if ! is_root; then
    echo "setup.sh: missing Debian packages: ${missing[*]}" >&2
    echo "setup.sh: install them with:  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  lock_and_restart "$@"
  say "installing missing Debian packages: ${missing[*]}"
  apt-get update -q || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" \
    || die "apt-get install failed for: ${missing[*]}"
  find_missing
  [ ${#missing[@]} -eq 0 ] || die "still missing after apt-get install: ${missing[*]}"
fi

# --- 2. OpenBLAS must be the OpenMP variant ------------------------------------------
openblas_ok() {
  OPENBLAS_LIBDIR=$(pkg-config --variable=libdir openblas 2>/dev/null || true)
  OPENBLAS_LIBDIR=${OPENBLAS_LIBDIR%/}
  case $OPENBLAS_LIBDIR in */openblas-openmp) ;; *) return 1 ;; esac
  MULTIARCH_LIBDIR=${OPENBLAS_LIBDIR%/openblas-openmp}
  case $(readlink -f "$MULTIARCH_LIBDIR/libopenblas.so.0") in
    "$OPENBLAS_LIBDIR"/*) return 0 ;;
  esac
  return 1
}
if ! openblas_ok; then
  need_root "OpenBLAS is not the OpenMP build (pkg-config libdir '${OPENBLAS_LIBDIR:-none}'); repointing the alternatives"
  lock_and_restart "$@"
  ma=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
  say "setting OpenBLAS alternatives to the OpenMP build (libopenblas-openmp-dev)"
  update-alternatives --quiet --set "libopenblas.so-$ma" "/usr/lib/$ma/openblas-openmp/libopenblas.so"
  update-alternatives --quiet --set "libopenblas.so.0-$ma" "/usr/lib/$ma/openblas-openmp/libopenblas.so.0"
  ldconfig
  openblas_ok || die "pkg-config openblas is '$(pkg-config --variable=libdir openblas || true)', not the openblas-openmp build"
fi

# --- 3. FAISS C API ------------------------------------------------------------------
FAISS_VERSION=${VERSION[libfaiss-dev]}                       # e.g. 1.7.3-2+b1
FAISS_SRC_VERSION=${SRCVERSION[libfaiss-dev]}                 # e.g. 1.7.3-2
FAISS_UPSTREAM=${FAISS_SRC_VERSION#*:}; FAISS_UPSTREAM=${FAISS_UPSTREAM%-*} # e.g. 1.7.3
FAISS_A=$MULTIARCH_LIBDIR/libfaiss.a
SONAME=libfaiss_c.so.$FAISS_UPSTREAM
stamp_head="recipe=$FAISS_C_RECIPE libfaiss-dev=$FAISS_VERSION openblas=$OPENBLAS_LIBDIR lib=$LIBDIR/$SONAME"

faiss_c_ok() {
  [ -r "$STAMP" ] && [ -f "$LIBDIR/$SONAME" ] || return 1
  [ "$(readlink "$LIBDIR/libfaiss_c.so" 2>/dev/null)" = "$SONAME" ] || return 1
  local head sum
  { read -r head; read -r sum; } < "$STAMP" || return 1
  [ "$head" = "$stamp_head" ] || return 1
  [ "$sum" = "sha256=$(sha256sum < "$LIBDIR/$SONAME" | cut -d' ' -f1)" ]
}
if faiss_c_ok; then
  say "ok (packages present, OpenBLAS openmp, FAISS C API $FAISS_VERSION in $LIBDIR)"
  exit 0
fi

need_root "building the FAISS C API (libfaiss_c) into $LIBDIR"
lock_and_restart "$@"
[ -f "$FAISS_A" ] || die "$FAISS_A not found (is libfaiss-dev installed for this architecture?)"
[ -f /usr/include/faiss/c_api/faiss_c.h ] || die "/usr/include/faiss/c_api/faiss_c.h not found"
say "building the FAISS C API from Debian source faiss $FAISS_SRC_VERSION (libfaiss-dev $FAISS_VERSION)"
t0=$SECONDS

# Debian's source index for the same suites as the binary packages (deb822 or one-line).
have_source() {
  apt-cache showsrc --only-source faiss 2>/dev/null | grep -qx "Version: $FAISS_SRC_VERSION"
}
if ! have_source; then
  tmp_list=$(mktemp)
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    # every stanza with a "deb" type, comments dropped, as "deb-src"
    awk 'BEGIN { RS = ""; ORS = "\n\n" }
         /(^|\n)Types:[^\n]*deb/ { gsub(/(^|\n)#[^\n]*/, ""); sub(/Types:[^\n]*/, "Types: deb-src"); print }' \
      /etc/apt/sources.list.d/debian.sources > "$tmp_list"
  elif [ -f /etc/apt/sources.list ]; then
    SRC_LIST=${SRC_LIST%.sources}.list
    sed -n 's/^[[:space:]]*deb[[:space:]]/deb-src /p' /etc/apt/sources.list > "$tmp_list"
  fi
  [ -s "$tmp_list" ] || { rm -f "$tmp_list"; die "no Debian apt sources found to derive a deb-src entry from"; }
  say "adding $SRC_LIST and running apt-get update"
  install -m 0644 "$tmp_list" "$SRC_LIST"; rm -f "$tmp_list"
  apt-get update -q > /dev/null || die "apt-get update failed (with $SRC_LIST)"
  have_source || die "source package faiss $FAISS_SRC_VERSION is not available from the mirror; upgrade libfaiss-dev (apt-get install --only-upgrade libfaiss-dev) and rerun"
fi

work=$(mktemp -d /tmp/joule-faiss-c.XXXXXX)
trap 'rm -rf "$work"' EXIT
log=$work/build.log
fail() { tail -n 40 "$log" >&2 || true; die "$1 (log above; work dir removed)"; }
chown _apt "$work" 2>/dev/null || true     # lets apt download unsandboxed-warning-free
( cd "$work" && apt-get source -q faiss="$FAISS_SRC_VERSION" ) >> "$log" 2>&1 || fail "apt-get source faiss failed"
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'faiss-*' | head -n1)
[ -n "$src" ] && [ -f "$src/c_api/CMakeLists.txt" ] || fail "unpacked faiss source has no c_api/CMakeLists.txt"

# The C API sources are the FAISS_C_SRC list of c_api/CMakeLists.txt. Its only
# subdirectory is gpu/ (GPU only, skipped); anything else means the recipe needs a look.
cm=$src/c_api/CMakeLists.txt
sources=$(sed -n '/set(FAISS_C_SRC/,/)/p' "$cm" | sed -e 's/set(FAISS_C_SRC//' -e 's/)//' | tr -s ' \t' '\n\n' | grep '\.cpp$' || true)
[ -n "$sources" ] || fail "no FAISS_C_SRC list in $cm"
if grep -E 'add_subdirectory\(' "$cm" | grep -vq 'add_subdirectory(gpu)'; then
  fail "c_api/CMakeLists.txt adds an unexpected subdirectory: $(grep 'add_subdirectory(' "$cm" | tr '\n' ' ')"
fi

# Copy only the .cpp files, so every "Foo_c.h" include resolves to the INSTALLED header
# (/usr/include/faiss/c_api/<same subdir>), never to the source tree's copy.
obj=$work/obj
for s in $sources; do
  mkdir -p "$obj/$(dirname "$s")"
  cp "$src/c_api/$s" "$obj/$s"
done
jobs=$(nproc 2>/dev/null || echo 2)
export obj log
printf '%s\n' $sources | xargs -P "$jobs" -n 1 sh -c '
  s=$1; d=$(dirname "$s")
  g++ -std=c++11 -O2 -fPIC -DNDEBUG -I"/usr/include/faiss/c_api/$d" -I/usr/include/faiss/c_api \
      -c "$obj/$s" -o "$obj/$s.o" >> "$log" 2>&1 || { echo "compile failed: $s" >> "$log"; exit 255; }
' sh || fail "compiling the FAISS C API failed"

# One shared library: our objects + the (position-independent) libfaiss.a members they
# need, linked to the OpenMP OpenBLAS by path (RUNPATH), libgomp and libstdc++.
# --exclude-libs keeps FAISS's C++ symbols private; -z defs proves nothing is unresolved.
libout=$work/$SONAME
g++ -shared -o "$libout" -Wl,-soname,"$SONAME" -Wl,-z,defs -Wl,-z,now -Wl,--exclude-libs,ALL \
    $(find "$obj" -name '*.o' | sort) "$FAISS_A" \
    -L"$OPENBLAS_LIBDIR" -Wl,-rpath,"$OPENBLAS_LIBDIR" -lopenblas -fopenmp -lm >> "$log" 2>&1 \
  || fail "linking $SONAME failed"
if readelf -d "$libout" | grep -E 'NEEDED.*lib(c?blas|lapack)\.so' >> "$log"; then
  fail "$SONAME depends on the generic BLAS/LAPACK alternatives; expected only libopenblas"
fi

# Smoke-check the fresh library before installing it: a C program, C API only.
cat > "$work/check.c" <<'EOF'
#include <stdio.h>
#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_factory_c.h>
int main(void) {
  enum { D = 8, N = 64 };
  float x[N * D]; float dist[2]; idx_t lab[2];
  for (int i = 0; i < N * D; i++) x[i] = (float)((i * 7919) % 101) / 101.0f;
  FaissIndex *idx = NULL;
  if (faiss_index_factory(&idx, D, "Flat", METRIC_L2)) { puts(faiss_get_last_error()); return 1; }
  /* N queries: large enough for the BLAS (sgemm) path */
  if (faiss_Index_add(idx, N, x)) return 2;
  float dd[N * 2]; idx_t ll[N * 2];
  if (faiss_Index_search(idx, N, x, 2, dd, ll)) return 3;
  if (faiss_Index_search(idx, 1, x + 5 * D, 2, dist, lab) || lab[0] != 5 || dist[0] > 1e-5f) return 4;
  faiss_Index_free(idx);
  puts("ok");
  return 0;
}
EOF
gcc -O1 -o "$work/check" "$work/check.c" -L"$work" -l:"$SONAME" -Wl,-rpath,"$work" >> "$log" 2>&1 \
  || fail "compiling the check program against $SONAME failed"
"$work/check" >> "$log" 2>&1 || fail "the check program against $SONAME failed"

# Install: versioned file + dev symlink + pkg-config file, drop other versions, stamp last.
rm -f "$STAMP"
install -d "$LIBDIR" "$LIBDIR/pkgconfig"
install -m 0644 "$libout" "$LIBDIR/.$SONAME.new"
mv -f "$LIBDIR/.$SONAME.new" "$LIBDIR/$SONAME"
ln -sfn "$SONAME" "$LIBDIR/libfaiss_c.so"
for old in "$LIBDIR"/libfaiss_c.so.* "$LIBDIR"/libfaiss_c.a; do
  [ -e "$old" ] || continue
  [ "$old" = "$LIBDIR/$SONAME" ] || rm -f "$old"
done
cat > "$LIBDIR/pkgconfig/faiss_c.pc" <<EOF
# Written by joule scripts/setup.sh: FAISS C API built from Debian faiss $FAISS_SRC_VERSION.
prefix=$PREFIX
libdir=\${prefix}/lib
includedir=/usr/include

Name: faiss_c
Description: FAISS C API (libfaiss_c) over Debian libfaiss-dev $FAISS_VERSION
Version: $FAISS_UPSTREAM
Libs: -L\${libdir} -lfaiss_c
Cflags: -I\${includedir}
EOF
ldconfig
printf '%s\nsha256=%s\n' "$stamp_head" "$(sha256sum < "$LIBDIR/$SONAME" | cut -d' ' -f1)" > "$STAMP.new"
mv -f "$STAMP.new" "$STAMP"
faiss_c_ok || die "installed $LIBDIR/$SONAME but the stamp check still fails"
say "installed $LIBDIR/$SONAME (+ libfaiss_c.so, pkgconfig/faiss_c.pc, $(basename "$STAMP")) in $((SECONDS - t0))s"
