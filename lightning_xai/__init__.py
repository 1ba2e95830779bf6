"""lightning-xai: explain image classifiers while they train.

Core algorithms are plain PyTorch modules (``lightning_xai.capture``, ``lightning_xai.drift``, ...);
Lightning callbacks live in ``lightning_xai.callbacks``; records and logger sinks in
``lightning_xai.records`` / ``lightning_xai.sinks``; the planted-concept world in ``lightning_xai.world``.
"""

__version__ = "0.1.0"
