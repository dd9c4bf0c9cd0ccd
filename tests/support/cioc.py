"""A real EPICS C IOC (epicscorelibs' minimal softIoc: EPICS base's dbCore, record support and RSRV).

    python -m tests.support.cioc FILE.db MACROS [FILE2.db MACROS2 ...]

loads each database with ``dbLoadRecords``, runs ``iocInit`` and serves it over CA on the ports
given in the environment until SIGTERM. Tests use it as the reference for what an EPICS record
with the same fields serves.
"""

from __future__ import annotations

import signal
import sys

from epicscorelibs.ioc import start_ioc


def main() -> None:
    args = sys.argv[1:] + ([""] if len(sys.argv) % 2 == 0 else [])  # FILE [MACROS] pairs
    start_ioc(dbs=list(zip(args[::2], args[1::2], strict=True)), extra_dbd_load=(), extra_dso_load=())
    print("CIOC READY", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
