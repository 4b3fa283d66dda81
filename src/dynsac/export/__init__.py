"""The trained controller outside dynsac: `load_controller`, `Controller`, `export_controller`."""

from dynsac.export.controller import Controller, load_controller
from dynsac.export.files import ExportError, export_controller

__all__ = ["Controller", "ExportError", "export_controller", "load_controller"]
