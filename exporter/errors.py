"""The one exception type the exporter CLI turns into a single-line message."""


class ExportError(Exception):
    """A problem the user can fix (bad model spec, weights, layer, unsupported op, parity)."""
