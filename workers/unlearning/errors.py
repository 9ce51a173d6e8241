"""Errors of the forgetting library."""


class UnlearningError(Exception):
    """Base class of every error the library raises on purpose."""


class InvalidDataError(UnlearningError, ValueError):
    """Inputs with NaN/Inf, a wrong shape, labels outside the classes, or an empty set."""


class ConfigError(UnlearningError, ValueError):
    """A configuration that cannot work (unknown method, bad linearize spec, ...)."""
