"""One model's cycle on the event loop: the runner, its triggers, the hand-off of updates from client
threads, off-loop inference and the cycle's monitors. Depends only on :mod:`ioc.core`.
"""
