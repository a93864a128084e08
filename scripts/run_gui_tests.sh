#!/usr/bin/env bash
# Runs the GUI tests (marker `gui`), one pytest process per test file.
#
# Every napari viewer leaves OpenGL state behind in its process (Mesa's software renderer under
# Xvfb), and viewers in one process have ended, now and then, in a segmentation fault inside the
# renderer (vispy's glDrawArrays during a synchronous repaint), never in this project's code. So
# each file gets a fresh process; when a file's process is killed by a signal (exit status > 128),
# its tests run again one process per test, each at most twice, loudly. A test that fails (exit
# status 1) is never re-run: only a crash of the process is.
#
# Usage: scripts/run_gui_tests.sh [PYTHON] [extra pytest arguments]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
shift || true
files=$(grep -l "pytestmark = pytest.mark.gui\|pytest.mark.gui" tests/test_*.py | sort)
status=0

run() {  # run pytest on its arguments; echo nothing, return pytest's exit status
    "$PY" -m pytest -q -m gui -p no:cacheprovider "$@"
}

for f in $files; do
    run "$@" "$f"
    rc=$?
    if [ "$rc" -gt 128 ]; then
        echo "!! $f: the pytest process died by signal $((rc - 128)); its tests run again, one process each" >&2
        ids=$("$PY" -m pytest -q -m gui -p no:cacheprovider --collect-only "$@" "$f" 2>/dev/null | grep "::")
        rc=0
        for id in $ids; do
            run "$@" "$id"
            one=$?
            if [ "$one" -gt 128 ]; then
                echo "!! $id: died by signal $((one - 128)) again in a process of its own; once more" >&2
                run "$@" "$id"
                one=$?
            fi
            if [ "$one" -ne 0 ]; then
                echo "!! $id: exit status $one" >&2
                rc=1
            fi
        done
    fi
    # exit status 5: the file has no GUI test selected
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
        echo "!! $f: exit status $rc" >&2
        status=1
    fi
done
exit $status
