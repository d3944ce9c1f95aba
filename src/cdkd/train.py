"""``python -m cdkd.train``: see :mod:`cdkd.cli.train`."""

from cdkd.cli.train import main

if __name__ == "__main__":
    main()
