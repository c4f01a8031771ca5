"""Search spaces by name: ``spaces.get("ofa-mbv3")``, ``spaces.names()``.

Each space module registers itself with ``@register``; importing this package imports them all
(they need only numpy until a model is built).
"""

from .base import Space, get, make_divisible, names, register
from . import convnet, fbnet, hurricane, nasbench201, ofa  # noqa: F401  (each registers its space)

__all__ = ["Space", "get", "names", "register", "make_divisible"]
