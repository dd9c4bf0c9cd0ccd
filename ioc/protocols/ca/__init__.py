"""Our Channel Access server: :mod:`~ioc.protocols.ca.wire` (messages and DBR payloads, no I/O) and
:mod:`~ioc.protocols.ca.server` (asyncio). :mod:`ioc.protocols.ca_server` adapts the PV model to it."""
