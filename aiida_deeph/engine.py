"""Small engine-level helpers shared by the plugin's processes (AiiDA layer)."""
from __future__ import annotations


class AttachedOutputsMixin:
    """``Process.update_outputs`` without a database query when no output was added since the last call.

    aiida-core calls ``update_outputs`` on every state change of a process (about 18 times per
    structure for an OpenmxBaseWorkChain and its OpenmxCalculation) and each call queries the node's
    outgoing links to find which outputs are new. Outputs are only ever added, so when the labels of
    ``self.outputs`` are all among those this instance already attached (or there are none), there is
    nothing to do. Otherwise aiida-core's own ``update_outputs`` runs, unchanged. After a reload from a
    checkpoint the set starts empty, so the first call with outputs goes to aiida-core again.
    """

    def update_outputs(self) -> None:
        flat = set(self._flat_outputs())
        if flat <= self.__dict__.get("_deeph_attached_outputs", set()):
            return
        super().update_outputs()
        self.__dict__["_deeph_attached_outputs"] = flat
