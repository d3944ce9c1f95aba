"""``python -m cdkd.export``: see :mod:`cdkd.cli.export`."""

from cdkd.cli.export import main

if __name__ == "__main__":
    main()
