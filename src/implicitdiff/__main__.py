"""``python -m implicitdiff``: the experiments' command line (:mod:`implicitdiff.experiments`)."""

from implicitdiff.experiments.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
