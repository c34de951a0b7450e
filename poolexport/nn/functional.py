"""``poolexport.nn.functional`` is ``poolexport.functional`` (one module, two import paths:
torch users look for the functions beside the modules)."""
from ..functional import *  # noqa: F401,F403
from ..functional import __all__  # noqa: F401
