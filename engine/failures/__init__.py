"""When a run goes wrong: the plugin to blame and signals deferred to the end of a step.

- ``blame``: an exception raised in a plugin turned into one line naming the plugin and the way out.
- ``interrupts``: SIGINT/SIGTERM deferred to the end of the step in training (checkpoint, then exit).
"""
