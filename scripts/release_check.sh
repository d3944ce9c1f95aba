#!/usr/bin/env bash
# Release check: build the sdist and the wheel, check their metadata and contents, install the
# wheel into a fresh virtual environment outside the repository and run it from a folder
# outside the repository: `python -m cdkd --version`, the packaged configuration, and one smoke
# training stage (data/ and runs/ written under that folder).
#
# The fresh environment gets its dependencies from the project's environment without
# reinstalling them: a .pth file appends that environment's site-packages after its own (a
# plain path: the .pth files there, among them the editable install of this checkout, are not
# run), and the wheel is installed with --no-deps. Nothing is downloaded.
#
# Usage: scripts/release_check.sh [PYTHON]   (default: .venv/bin/python; `make release-check`)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${1:-$ROOT/.venv/bin/python}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cdkd-release.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
START=$SECONDS

step() { printf '\n== [%3d s] %s\n' $((SECONDS - START)) "$*"; }
fail() {
    echo "release-check: $*" >&2
    exit 1
}

[[ -x "$PYTHON" ]] || fail "$PYTHON: no such interpreter (run make install first)"
case "$WORK" in "$ROOT"/*) fail "$WORK: temporary folder inside the repository" ;; esac
VERSION="$(PYTHONPATH="$ROOT/src" "$PYTHON" -c \
    'from cdkd.version import package_version; print(package_version())')"

step "build sdist and wheel of cdkd $VERSION"
# No build isolation: hatchling comes from the project's environment (the release extra), so
# the check needs no network; build still verifies that [build-system] requires are met.
"$PYTHON" -m build --no-isolation --outdir "$WORK/dist" "$ROOT"
SDIST="$WORK/dist/cdkd-$VERSION.tar.gz"
WHEEL="$WORK/dist/cdkd-$VERSION-py3-none-any.whl"
[[ -f "$SDIST" && -f "$WHEEL" ]] || fail "expected $(basename "$SDIST") and $(basename "$WHEEL")"

step "twine check"
"$PYTHON" -m twine check --strict "$SDIST" "$WHEEL"

step "check-wheel-contents"
"$PYTHON" -m check_wheel_contents --config "$ROOT/pyproject.toml" "$WHEEL"

step "install the wheel into a fresh environment"
VENV="$WORK/venv"
"$PYTHON" -m venv --without-pip "$VENV"
OWN="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
DEPS="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$DEPS" >"$OWN/zz_cdkd_release_check_deps.pth"
"$PYTHON" -m pip --python "$VENV/bin/python" install --quiet --no-deps --no-index "$WHEEL"

RUN="$WORK/run"
mkdir -p "$RUN"
cd "$RUN"
unset PYTHONPATH CDKD_DATA_DIR CDKD_RUNS_DIR

step "the installed package, outside the repository"
"$VENV/bin/python" - "$VENV" "$VERSION" <<'PY'
import sys
from pathlib import Path

import cdkd
from cdkd.config import config_dir

venv, version = Path(sys.argv[1]).resolve(), sys.argv[2]
checks = {
    f"cdkd imported from the fresh environment ({cdkd.__file__})": Path(cdkd.__file__)
    .resolve()
    .is_relative_to(venv),
    f"packaged configuration found ({config_dir()})": Path(config_dir()).resolve().is_relative_to(venv)
    and (Path(config_dir()) / "experiment" / "smoke.yaml").is_file(),
    f"cdkd.__version__ is {version} ({cdkd.__version__})": cdkd.__version__ == version,
}
for label, ok in checks.items():
    print(("ok    " if ok else "FAIL  ") + label)
sys.exit(0 if all(checks.values()) else 1)
PY

step "python -m cdkd --version; cdkd --version"
for command in "$VENV/bin/python -m cdkd" "$VENV/bin/cdkd"; do
    out="$($command --version)"
    echo "$out"
    [[ "$out" == "cdkd $VERSION" ]] || fail "$command --version printed '$out', expected 'cdkd $VERSION'"
done
[[ "$("$VENV/bin/cdkd" --help)" == *"cdkd-train "* ]] || fail "cdkd --help lists no tools"

step "python -m cdkd.train experiment=smoke (in $RUN)"
"$VENV/bin/python" -m cdkd.train experiment=smoke
[[ -d "$RUN/data" && -d "$RUN/runs" ]] || fail "the smoke run wrote no data/ and runs/ under $RUN"
ls "$RUN"/runs/*/*/baseline/best.ckpt >/dev/null || fail "the smoke run left no best checkpoint"

step "release check passed in $((SECONDS - START)) s"
