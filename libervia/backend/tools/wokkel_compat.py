"""Make wokkel 18.0.0 importable on current Twisted.

wokkel 18.0.0 is the last release. Its modules import the name ``_PY3`` from
``twisted.python.compat``, which Twisted removed in 22.x, so a plain
``import wokkel.pubsub`` fails with ImportError. Defining that flag before the
first wokkel import is all the pubsub, disco, data form and client modules
need. Import this module (``install()`` runs at import) before any wokkel
module; ``libervia.backend`` modules do so at their top.
"""

import warnings

import twisted.python.compat as _twisted_compat


def install() -> None:
    """Define the compat names wokkel 18.0.0 expects from Twisted."""
    if not hasattr(_twisted_compat, "_PY3"):
        _twisted_compat._PY3 = True


install()

# wokkel touches several deprecated Twisted aliases at import time; these
# warnings are about wokkel's code, not ours.
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"wokkel(\..*)?")
