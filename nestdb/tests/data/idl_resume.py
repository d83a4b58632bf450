"""Python IDL across a nestdb-server restart (pip package 'ovs').

Usage: idl_resume.py REMOTE SCHEMA_FILE.  Prints "synced" once the initial contents
are in, then waits until a row named "after-restart" appears (the test restarts the
server and inserts it meanwhile) and prints a JSON report.  Every wait is bounded.
"""
import json
import sys
import time

import ovs.db.idl
import ovs.poller

remote, schema_file = sys.argv[1], sys.argv[2]
DEADLINE = time.monotonic() + 60


def run_until(idl, pred, what):
    while True:
        idl.run()
        if pred():
            return
        if time.monotonic() > DEADLINE:
            sys.exit("timed out waiting for " + what)
        poller = ovs.poller.Poller()
        idl.wait(poller)
        poller.timer_wait(100)
        poller.block()


def names(idl):
    return sorted(r.name for r in idl.tables["Node"].rows.values())


helper = ovs.db.idl.SchemaHelper(schema_file)
helper.register_all()
idl = ovs.db.idl.Idl(remote, helper)
# The jsonrpc session is private in the ovs package (named _session since 2.x).
session = getattr(idl, "_session", None) or getattr(idl, "session")
session.reconnect.set_backoff(100, 500)
run_until(idl, lambda: "before" in names(idl), "initial sync")
print("synced", flush=True)
seqno = session.get_seqno()
run_until(idl, lambda: "after-restart" in names(idl), "the row inserted after the restart")
report = {"names": names(idl), "reconnected": session.get_seqno() != seqno}
idl.close()
print(json.dumps(report), flush=True)
