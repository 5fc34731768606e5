"""The names the daemon and the tests import: ``IkeConfig`` (oe.ike.config) and ``IkeEngine``
(oe.ike.engine). The IKE SA is oe.ike.ike_sa, its exchanges oe.ike.tasks."""

from oe.ike.config import IkeConfig
from oe.ike.engine import IkeEngine

__all__ = ["IkeConfig", "IkeEngine"]
