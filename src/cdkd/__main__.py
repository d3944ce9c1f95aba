"""``python -m cdkd``: see :mod:`cdkd.cli.about`."""

from cdkd.cli.about import main

if __name__ == "__main__":
    main()
