"""Network implementations; importing this package registers every model by name."""

from cdkd.models.zoo import fcsn, tinycd

__all__ = ["fcsn", "tinycd"]
