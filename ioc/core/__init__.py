"""Pure logic: configuration, the PV model, the PV layout, the inference engine, the model store, drift
scores and guards. No network I/O, no event loop, no threads of its own: unit-tested directly.
"""
