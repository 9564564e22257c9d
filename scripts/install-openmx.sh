#!/usr/bin/env bash
# Build OpenMX 3.9 from its unmodified source into a cache folder and assemble a DFT_DATA19 for it.
#
#   bash scripts/install-openmx.sh [--source TARBALL] [--prefix DIR] [--data DIR] [--jobs N] [--quiet]
#
#   --source  the OpenMX 3.9 source tarball (default: ../shared/openmx-src/openmx3.9-source.tar.xz
#             beside the checkout; elsewhere pass the official openmx3.9.tar.gz)
#   --prefix  the cache folder (default: ${XDG_CACHE_HOME:-~/.cache}/aiida-deeph/openmx-3.9)
#   --data    a folder with PAO/ and VPS/ (files plain or .xz; default ../shared/openmx-data, else the
#             DFT_DATA19 inside the tarball when it has one)
#
# The build goes to PREFIX/<first 16 hex of the tarball's sha256>/ (so a second call with the same
# tarball is instant), the data to PREFIX/<key>/DFT_DATA19/{PAO,VPS} (the files of the package's basis
# table), and PREFIX/install.json records the last good install. aiida_deeph.openmx_install finds it by
# the same rule (OPENMX_EXECUTABLE / OPENMX_DATA_PATH first), so `aiida-deeph setup openmx --auto` and
# `pytest -m real_openmx` need nothing more. On success it prints the two paths as shell exports.
# Where root on Debian/Ubuntu, missing build dependencies are installed with apt-get. Every failure
# ends with one line starting 'install-openmx: error:'. OpenMX's code is never copied into the repository.
#
# May be sourced (scripts/test.sh does): it then exports OPENMX_EXECUTABLE and OPENMX_DATA_PATH and
# returns non-zero on failure instead of exiting.

_iox_main() {
    local here src="" prefix="" data="" jobs="" quiet=0
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    while [ $# -gt 0 ]; do
        case "$1" in
            --source) src="${2:-}"; shift 2 ;;
            --prefix) prefix="${2:-}"; shift 2 ;;
            --data) data="${2:-}"; shift 2 ;;
            --jobs) jobs="${2:-}"; shift 2 ;;
            --quiet) quiet=1; shift ;;
            -h|--help) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; return 0 ;;
            *) _iox_err "unknown option '$1' (see --help)"; return 2 ;;
        esac
    done
    [ -n "$src" ] || src="$here/../shared/openmx-src/openmx3.9-source.tar.xz"
    [ -n "$prefix" ] || prefix="${XDG_CACHE_HOME:-$HOME/.cache}/aiida-deeph/openmx-3.9"
    [ -n "$jobs" ] || jobs="$(nproc 2>/dev/null || echo 2)"
    if [ ! -f "$src" ]; then
        _iox_err "no OpenMX source tarball at '$src' (pass --source openmx3.9.tar.gz, from https://www.openmx-square.org)"
        return 1
    fi
    src="$(cd "$(dirname "$src")" && pwd)/$(basename "$src")"
    local sha key dir
    sha="$(sha256sum "$src" | cut -d' ' -f1)" || { _iox_err "cannot read '$src'"; return 1; }
    key="${sha:0:16}"
    dir="$prefix/$key"
    mkdir -p "$prefix" || { _iox_err "cannot create the cache folder '$prefix'"; return 1; }

    # 1. the executable (cached by the tarball's sha256)
    if [ -x "$dir/bin/openmx" ] && [ -f "$dir/BUILD_OK" ]; then
        _iox_log "cached build $dir/bin/openmx (source sha256 $key...)"
    else
        _iox_deps || return 1
        _iox_build "$src" "$dir" "$jobs" "$quiet" || return 1
    fi

    # 2. DFT_DATA19 with the PAO and VPS files of the basis table
    if [ -z "$data" ]; then
        if [ -d "$here/../shared/openmx-data/PAO" ]; then data="$here/../shared/openmx-data"
        elif [ -d "$dir/src/DFT_DATA19/PAO" ]; then data="$dir/src/DFT_DATA19"
        else _iox_err "no PAO/VPS data found: pass --data DIR (a folder with PAO/ and VPS/, e.g. OpenMX's DFT_DATA19)"; return 1
        fi
    fi
    _iox_data "$here" "$data" "$dir/DFT_DATA19" || return 1

    # 3. record it (atomically) and check that it starts
    _iox_smoke "$dir/bin/openmx" || return 1
    local tmp="$prefix/.install.json.$$"
    printf '{"executable": "%s", "data_path": "%s", "source": "%s", "sha256": "%s", "version": "3.9"}\n' \
        "$dir/bin/openmx" "$dir/DFT_DATA19" "$src" "$sha" >"$tmp" && mv -f "$tmp" "$prefix/install.json"
    export OPENMX_EXECUTABLE="$dir/bin/openmx" OPENMX_DATA_PATH="$dir/DFT_DATA19"
    echo "export OPENMX_EXECUTABLE=$OPENMX_EXECUTABLE"
    echo "export OPENMX_DATA_PATH=$OPENMX_DATA_PATH"
}

_iox_log() { printf 'install-openmx: %s\n' "$*" >&2; }
_iox_err() { printf 'install-openmx: error: %s\n' "$*" >&2; }

_iox_deps() {
    # The Debian packages of BUILD.md; only the commands/headers are checked, apt-get only where root.
    local missing=""
    command -v mpicc >/dev/null 2>&1 || missing="$missing libopenmpi-dev openmpi-bin"
    command -v mpif90 >/dev/null 2>&1 || missing="$missing gfortran libopenmpi-dev"
    command -v make >/dev/null 2>&1 || missing="$missing make"
    command -v xz >/dev/null 2>&1 || missing="$missing xz-utils"
    [ -f /usr/include/fftw3.h ] || missing="$missing libfftw3-dev"
    ls /usr/lib/x86_64-linux-gnu/libscalapack-openmpi.so* /usr/lib/*/libscalapack-openmpi.so* >/dev/null 2>&1 \
        || missing="$missing libscalapack-openmpi-dev"
    ls /usr/lib/*/libopenblas.so* /usr/lib/libopenblas.so* >/dev/null 2>&1 || missing="$missing libopenblas-dev liblapack-dev"
    [ -z "$missing" ] && return 0
    # shellcheck disable=SC2086
    missing="$(printf '%s\n' $missing gcc | sort -u | tr '\n' ' ')"
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        _iox_err "missing build dependencies: install ${missing% } (Debian/Ubuntu: sudo apt-get install -y ${missing% })"
        return 1
    fi
    _iox_log "installing ${missing% } with apt-get..."
    local log=/tmp/aiida-deeph-openmx-apt.log
    # shellcheck disable=SC2086
    if ! { DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends $missing >"$log" 2>&1 \
           || { DEBIAN_FRONTEND=noninteractive timeout 900 apt-get update -qq >>"$log" 2>&1 \
                && DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends $missing >>"$log" 2>&1; }; }; then
        _iox_err "apt-get could not install ${missing% }: $(grep -E '^E:' "$log" | tail -n 1) (log: $log)"
        return 1
    fi
}

_iox_build() {
    local src="$1" dir="$2" jobs="$3" quiet="$4" work
    work="$dir.build.$$"
    rm -rf "$work" && mkdir -p "$work" || { _iox_err "cannot write '$work'"; return 1; }
    _iox_log "unpacking $(basename "$src")..."
    if ! tar -xf "$src" -C "$work" 2>"$work/tar.log"; then
        _iox_err "the tarball '$src' is corrupt or not a tar archive: $(tail -n 1 "$work/tar.log")"
        rm -rf "$work"; return 1
    fi
    local mk
    mk="$(find "$work" -maxdepth 3 -path '*source/makefile' | head -n 1)"
    if [ -z "$mk" ] || [ ! -f "$(dirname "$mk")/openmx.c" ]; then
        _iox_err "'$src' holds no OpenMX source (no source/makefile beside openmx.c)"
        rm -rf "$work"; return 1
    fi
    local s; s="$(dirname "$mk")"
    # The three makefile lines of BUILD.md (Debian's MPI, ScaLAPACK, OpenBLAS, FFTW); MKLROOT off.
    local libdir=/usr/lib/x86_64-linux-gnu
    [ -d "$libdir" ] || libdir="/usr/lib/$(gcc -print-multiarch 2>/dev/null)"
    sed -i -e 's|^MKLROOT|#MKLROOT|' \
        -e "s|^CC *=.*|CC = mpicc -O3 -fopenmp -fcommon -Dkcomp -Wno-error=implicit-function-declaration -I/usr/include|" \
        -e "s|^FC *=.*|FC = mpif90 -O3 -fopenmp -fallow-argument-mismatch -Dkcomp|" \
        -e "s|^LIB *=.*|LIB= -L$libdir -lscalapack-openmpi -lopenblas -lfftw3 -lmpi_mpifh -lgfortran -lm|" "$mk"
    _iox_log "building OpenMX 3.9 with make -j$jobs (about 4 minutes on 2 cores; log: $dir.build.log)..."
    if ! (cd "$s" && make -j"$jobs" openmx) >"$dir.build.log" 2>&1 || [ ! -x "$s/openmx" ]; then
        local why
        why="$(grep -E 'cannot find -l|No such file or directory|command not found|Error [0-9]|error:' "$dir.build.log" | head -n 1)"
        _iox_err "the OpenMX build failed: ${why:-see $dir.build.log} (log: $dir.build.log)"
        rm -rf "$work"; return 1
    fi
    [ "$quiet" = 1 ] || _iox_log "built $(basename "$src") ($(grep -c "^mpicc\|^mpif90" "$dir.build.log") compiler calls)"
    rm -rf "$dir"
    mkdir -p "$dir/bin" && mv "$s/openmx" "$dir/bin/openmx" || { _iox_err "cannot install into '$dir'"; rm -rf "$work"; return 1; }
    # Keep the tarball's own DFT_DATA19 (if any) as a data fallback; drop the object files.
    local dd; dd="$(find "$work" -maxdepth 3 -type d -name DFT_DATA19 | head -n 1)"
    if [ -n "$dd" ]; then mkdir -p "$dir/src" && mv "$dd" "$dir/src/DFT_DATA19"; fi
    rm -rf "$work"
    mv "$dir.build.log" "$dir/build.log"
    touch "$dir/BUILD_OK"
}

_iox_data() {
    # Decompress the PAO and VPS files that the package's basis table names into OUT/{PAO,VPS}.
    local here="$1" from="$2" out="$3" py=python3 names
    [ -x "$here/.venv/bin/python" ] && py="$here/.venv/bin/python"
    names="$(cd "$here" && PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$py" - <<'EOF' 2>/dev/null
from aiida_deeph.core.basis import load_basis_table
table = load_basis_table("corpus")
for element in sorted(table.elements):
    print(table.pao(element).pao_file + ".pao", table.entry(element)["vps"] + ".vps")
EOF
)" || names=""
    mkdir -p "$out/PAO" "$out/VPS" || { _iox_err "cannot write '$out'"; return 1; }
    local missing="" f kind
    if [ -z "$names" ]; then   # no package importable: take every file there is
        for kind in PAO VPS; do
            for f in "$from/$kind"/*; do [ -e "$f" ] && _iox_put "$f" "$out/$kind"; done
        done
        return 0
    fi
    while read -r pao vps; do
        for pair in "PAO:$pao" "VPS:$vps"; do
            kind="${pair%%:*}"; f="${pair#*:}"
            [ -s "$out/$kind/$f" ] && continue
            if [ -f "$from/$kind/$f" ]; then _iox_put "$from/$kind/$f" "$out/$kind" || return 1
            elif [ -f "$from/$kind/$f.xz" ]; then _iox_put "$from/$kind/$f.xz" "$out/$kind" || return 1
            else missing="$missing $kind/$f"
            fi
        done
    done <<<"$names"
    if [ -n "$missing" ]; then
        _iox_err "the data folder '$from' lacks files of the basis table:$missing"
        return 1
    fi
}

_iox_put() {
    local f="$1" to="$2" base
    base="$(basename "$f")"
    case "$base" in
        *.xz) xz -dc "$f" >"$to/.${base%.xz}.tmp" && mv -f "$to/.${base%.xz}.tmp" "$to/${base%.xz}" \
                  || { _iox_err "cannot decompress '$f'"; return 1; } ;;
        *) cp -f "$f" "$to/$base" || { _iox_err "cannot copy '$f'"; return 1; } ;;
    esac
}

_iox_smoke() {
    # OpenMX without an input prints its usage and exits; a broken link (missing .so) shows here.
    local out
    if ! out="$(OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 60 "$1" -nt 1 </dev/null 2>&1)"; then
        if printf '%s' "$out" | grep -q 'error while loading shared libraries'; then
            _iox_err "the built openmx cannot start: $(printf '%s' "$out" | grep 'error while loading' | head -n 1)"
            return 1
        fi
    fi
    return 0
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -uo pipefail
    _iox_main "$@"
    exit $?
else
    _iox_main "$@"
fi
