#!/usr/bin/env bash
# Runs the GUI tests (marker `gui`), one pytest process per test file.
#
# Every napari viewer leaves OpenGL state behind in its process (Mesa's software renderer under
# Xvfb), and a long run of viewers in one process has ended in a segmentation fault inside the
# renderer (glDrawArrays), never in this project's code. So each file gets a fresh process, and a
# file whose process is killed by a signal (exit status > 128) is run once more, loudly. A test that
# fails (exit status 1) is never re-run: only a crash of the process is.
#
# Usage: scripts/run_gui_tests.sh [PYTHON] [extra pytest arguments]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
shift || true
files=$(grep -l "pytest.mark.gui\|pytestmark = pytest.mark.gui" tests/test_*.py | sort)
status=0
for f in $files; do
    "$PY" -m pytest -q -m gui -p no:cacheprovider "$@" "$f"
    rc=$?
    if [ "$rc" -gt 128 ]; then
        echo "!! $f: the pytest process died by signal $((rc - 128)); running this file once more" >&2
        "$PY" -m pytest -q -m gui -p no:cacheprovider "$@" "$f"
        rc=$?
    fi
    # exit status 5: the file has no GUI test selected
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
        echo "!! $f: exit status $rc" >&2
        status=1
    fi
done
exit $status
