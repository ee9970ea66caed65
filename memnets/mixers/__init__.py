"""Token mixers. Each module here registers its classes with ``@register_mixer(name)``; the registry
imports every module of this package on first use. The contract every mixer follows is in ``base``."""
