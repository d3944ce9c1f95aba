"""Command-line entry points: ``python -m cdkd.{train,eval,predict,score}``."""
