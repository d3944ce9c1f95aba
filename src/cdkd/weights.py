"""``python -m cdkd.weights list|fetch``: list or download the networks' pretrained weights."""

from cdkd.cli.weights import main

if __name__ == "__main__":
    main()
