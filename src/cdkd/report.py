"""``python -m cdkd.report``: see :mod:`cdkd.cli.report`."""

from cdkd.cli.report import main

if __name__ == "__main__":
    main()
