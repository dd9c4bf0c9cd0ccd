"""A real EPICS C IOC (epicscorelibs' minimal softIoc: EPICS base's dbCore, record support and RSRV).

    python -m tests.support.cioc FILE.db MACROS

loads one database with ``dbLoadRecords``, runs ``iocInit`` and serves it over CA on the ports
given in the environment until SIGTERM. Tests use it as the reference for what an EPICS record
with the same fields serves.
"""

from __future__ import annotations

import signal
import sys

from epicscorelibs.ioc import start_ioc


def main() -> None:
    database, macros = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
    start_ioc(dbs=[(database, macros)], extra_dbd_load=(), extra_dso_load=())
    print("CIOC READY", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
