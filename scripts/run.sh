#!/usr/bin/env bash
# Set up (or reuse) the project's virtual environment, then run one job in it.
#
#   scripts/run.sh demo [ARGS]   the main job: `landscape demo` on built-in data
#   scripts/run.sh test [ARGS]   lint + the test suite (what CI runs)
#   scripts/run.sh bench         install the benchmark peers as well
#   scripts/run.sh docs [serve]  build the documentation site strictly into site/
#                                (serve: live preview at http://127.0.0.1:8000)
#   scripts/run.sh -- CMD ...    any command inside the environment
#
# Environment:
#   SHARPSCAPE_VENV   where the venv lives (default: .venv beside this repo)
#   TORCH_SPEC        the torch to install when none is importable
#                     (default torch==2.13.0, the CPU build this platform serves)
#   PYTHON            the interpreter that creates the venv (default python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SHARPSCAPE_VENV:-$here/.venv}"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"

log() { printf '[sharpscape] %s\n' "$*" >&2; }

ensure_venv() {
    if [[ ! -x "$venv/bin/python" ]]; then
        if "$python" -c "import torch" >/dev/null 2>&1; then
            # Keep the torch the user already has (e.g. a CUDA build): reuse it from
            # the system site-packages instead of downloading another one.
            log "creating $venv (reusing the importable torch of $python)"
            "$python" -m venv --system-site-packages "$venv"
        else
            log "creating $venv"
            "$python" -m venv "$venv"
        fi
    fi
    if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
        log "installing $torch_spec"
        "$venv/bin/pip" install --quiet "$torch_spec"
    fi
}

ensure_package() {
    local extras="$1" stamp="$venv/.sharpscape-$1"
    # Reinstall only when pyproject.toml changed since the last install.
    if [[ ! -f "$stamp" || "$here/pyproject.toml" -nt "$stamp" ]]; then
        log "installing sharpscape[$extras]"
        "$venv/bin/pip" install --quiet -e "$here[$extras]"
        touch "$stamp"
    fi
}

ensure_bench() {
    ensure_package "test,bench"
    if ! "$venv/bin/python" -c "import curvlinops" >/dev/null 2>&1; then
        # --no-deps: see the note on the bench extra in pyproject.toml.
        "$venv/bin/pip" install --quiet --no-deps "curvlinops-for-pytorch>=2.0"
    fi
}

job="${1:-demo}"
shift || true
ensure_venv
case "$job" in
    demo)
        ensure_package "test"
        exec "$venv/bin/landscape" demo "$@"
        ;;
    test)
        ensure_package "test"
        cd "$here"
        "$venv/bin/ruff" format --check .
        "$venv/bin/ruff" check .
        exec "$venv/bin/python" -m pytest -n 2 "$@"
        ;;
    bench)
        ensure_bench
        ;;
    docs)
        ensure_package "docs"
        cd "$here"
        export NO_MKDOCS_2_WARNING=1
        if [[ "${1:-}" == "serve" ]]; then
            shift
            exec "$venv/bin/mkdocs" serve "$@"
        fi
        exec "$venv/bin/mkdocs" build --strict "$@"
        ;;
    --)
        ensure_package "test"
        exec "$@"
        ;;
    *)
        echo "usage: scripts/run.sh {demo|test|bench|docs|-- CMD} [ARGS]" >&2
        exit 2
        ;;
esac
