"""``python -m cdkd.eval``: see :mod:`cdkd.cli.eval`."""

from cdkd.cli.eval import main

if __name__ == "__main__":
    main()
