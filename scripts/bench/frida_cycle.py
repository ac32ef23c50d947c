#!/usr/bin/env python3
"""frida_cycle PID SCRIPT: attach frida to PID, run SCRIPT (which loads a library and replaces a
function, then sends 'replaced'), unload the script and detach: frida's whole patch cycle."""
import sys
import threading

import frida

pid, source = int(sys.argv[1]), sys.argv[2]
session = frida.attach(pid)
done = threading.Event()
script = session.create_script(source)
script.on("message", lambda m, _data: done.set() if m.get("payload") == "replaced" else print(m, file=sys.stderr))
script.load()
if not done.wait(30):
    sys.exit("frida: no 'replaced' message")
script.unload()
session.detach()
