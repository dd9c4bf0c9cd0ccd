"""Everything that talks to the world around one model besides the served PVs: client monitors of other
IOCs' PVs, the model store watcher and registry mirror, the recorder, autosave, Prometheus metrics
and closed-loop actions.
"""
