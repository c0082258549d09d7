"""Pruning methods, one file each. Importing this package imports every module in it, and each method
module registers itself (see registry.py): adding a method is adding a file."""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
