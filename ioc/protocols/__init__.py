"""The two thin protocol adapters that serve the PV model: Channel Access (caproto) and PV Access (p4p),
and the isolated fixes of caproto's traps. They translate readings to wire formats; nothing else.
"""
