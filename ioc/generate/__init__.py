"""``mlioc generate``: control-room artefacts generated from a config (alarms: :mod:`ioc.generate.alarms`)."""
