"""``python -m cdkd.import``: see :mod:`cdkd.cli.import_ckpt`.

``import`` is a Python keyword, so no import statement can name this module; ``python -m``
finds it by file name all the same.
"""

from cdkd.cli.import_ckpt import main

if __name__ == "__main__":
    main()
