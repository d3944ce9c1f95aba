"""``python -m cdkd.predict``: see :mod:`cdkd.cli.predict`."""

from cdkd.cli.predict import main

if __name__ == "__main__":
    main()
