"""Closed-loop actions: a model output written to a machine setpoint, under guards (docs/how-to/actions.md).

This is the edge around :mod:`ioc.core.guards` (the pure decision). Per model with ``action:`` outputs, an
:class:`ActionController` owns the ``$(P)ACTIONS`` switch and ``$(P)ACTIONS:TRIP``; per output an
:class:`Action` owns ``ACTION:<name>:STATE / SETPOINT / MESSAGE``, a monitor on its target (the
setpoint's current value and its connection) and one on its readback (:mod:`ioc.edges.sources`), and a
writer thread of its own.

Threads: everything with state runs on the event loop. The decision is taken just after each cycle
(the runner's cycle listener schedules it with ``call_soon``, so the cycle's predictions go out
first; a few microseconds of pure Python). A CA write is sent from the loop with libca's
put-with-callback, which only queues the request: the loop never waits for it, and the server's
completion status comes back on libca's thread (pyepics' own put callback ignores that status, so a
refused put would look like a success). The blocking client calls — a PVA put, and the probe of a
target (access rights, control limits) — run on the action's own single worker thread. Each PVA
write carries the *generation* it was decided in; a model swap, a trip or disarming bumps the
generation, and the writer drops a write whose generation is no longer current, so a value computed
by one model is never written after another model (or no model) took over. (A CA write is sent in
the same loop callback as its decision, so nothing can come between.)

Audit (logger ``mlioc.actions`` and ``<state_dir>/actions/<model>.jsonl``): every write and dry-run
proposal (time, target, old -> new, model version), every hold episode of a safety guard (start, and
end with the number of cycles held), every trip and arm/disarm. Trips and arm/disarm also go to the
model store's ``events.jsonl`` next to reloads and rollbacks; writes do not (at up to ``max_rate_hz``
they would bury the model's lifecycle in machine operations).
"""
