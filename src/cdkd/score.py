"""``python -m cdkd.score``: score predicted change masks against ground truth."""

from cdkd.cli.score import main

if __name__ == "__main__":
    main()
