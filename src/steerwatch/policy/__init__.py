"""The deployment policy: its schema (:mod:`.schema`), resolving it against a loaded model
(:mod:`.resolve`), what a request may do under it (:mod:`.admission`), the guard that refuses
questionable steering (:mod:`.guard`, :mod:`.distress`) and a starter policy (:mod:`.starter`).
Needs the ``serve`` extra (pydantic, PyYAML)."""
from ..extras import require

require("serve", "steerwatch.policy (deployment policies)")
