"""``python -m cdkd.pipeline``: see :mod:`cdkd.cli.pipeline`."""

from cdkd.cli.pipeline import main

if __name__ == "__main__":
    main()
