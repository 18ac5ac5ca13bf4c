"""python3 -m plumber_step STEP.py [ARGS...]: runs STEP.py, then serves its step."""
import runpy
import sys

import plumber_step


def main():
    if len(sys.argv) < 2:
        sys.stderr.write("usage: python3 -m plumber_step STEP.py [ARGS...]\n")
        return 2
    path = sys.argv[1]
    sys.argv = sys.argv[1:]
    names = runpy.run_path(path, run_name="__plumber_step__")
    return plumber_step.serve(on_start=names.get("on_start"))


if __name__ == "__main__":
    sys.exit(main())
