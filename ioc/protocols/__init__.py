"""The two thin protocol adapters that serve the PV model: Channel Access (our own server, ioc/protocols/ca/)
and PV Access (p4p). They translate readings to wire formats; nothing else.
"""
