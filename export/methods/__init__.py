"""Pruning methods, one file (or folder) each, each registering itself (see registry.py): adding a method is
adding a file. registry.all_methods() imports them all; importing this package imports none, so the registry and
the schedules' types stay importable without torch."""
