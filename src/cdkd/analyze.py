"""``python -m cdkd.analyze``: see :mod:`cdkd.cli.analyze`."""

from cdkd.cli.analyze import main

if __name__ == "__main__":
    main()
