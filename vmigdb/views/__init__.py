"""Renderers: each view turns core data (a RomInfo, events, batches) into a rich renderable.

Views never print: the edge (CLI, gdb command, monitor reply) picks the console, its width and
colour (``vmigdb.views.console``), so one view serves a terminal, gdb and a test's recording.
"""
