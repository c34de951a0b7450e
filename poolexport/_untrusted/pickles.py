"""Every unpickle inside an untrusted load is a weights-only one (a second layer under the
layout checks: what they let through still cannot unpickle arbitrary objects)."""
from __future__ import annotations

import contextlib
import threading

import torch

_unpickle_lock = threading.Lock()


@contextlib.contextmanager
def weights_only_unpickling():
    """Every ``torch.load`` in this block is ``weights_only=True``, whatever the caller asks.

    torch.export.load's own fallback (``weights_only=False`` after a failed weights-only
    load, torch/_export/serde/serialize.py ``deserialize_torch_artifact``) then fails
    instead of unpickling arbitrary objects. torch looks ``torch.load`` up at call time.
    """
    try:
        from torch.export.pt2_archive import _package  # torch >= 2.8
    except ImportError:
        _package = None

    real = torch.load

    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        return real(f, *args, **kwargs)

    with _unpickle_lock:
        torch.load = load
        # _load_constants pickle.loads opaque objects: the layout check refuses them; should
        # one get this far, it meets this instead of the pickle module
        if _package is not None:
            real_pickle, _package.pickle = _package.pickle, _NoPickle
        try:
            yield
        finally:
            torch.load = real
            if _package is not None:
                _package.pickle = real_pickle


class _NoPickle:
    @staticmethod
    def loads(*_args, **_kwargs):
        import pickle

        raise pickle.UnpicklingError("unpickling Python objects is disabled while loading an untrusted file")
