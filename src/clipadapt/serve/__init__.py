"""``clipadapt serve``: an HTTP app and web page over a saved adapted model (extra ``serve``).

``create_app(adapted_dir, index_dir=None, ...)`` builds the FastAPI app; see ``app`` for the
endpoints, ``uploads`` for the limits on what a request may carry, ``batching`` for how
requests share forward passes.
"""

from clipadapt.serve.app import create_app
from clipadapt.serve.uploads import Limits

__all__ = ["Limits", "create_app"]
