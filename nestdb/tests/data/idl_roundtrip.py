"""Drives nestdb-server with the Open vSwitch Python IDL (pip package 'ovs').

Usage: idl_roundtrip.py REMOTE SCHEMA_FILE.  Prints one JSON report on stdout.
Every wait is bounded; on timeout the script exits non-zero with a message.
"""
import json
import subprocess
import sys
import time

import ovs.db.idl
import ovs.poller

remote, schema_file = sys.argv[1], sys.argv[2]
DEADLINE = time.monotonic() + 30


def run_until(idl, pred, what):
    while not pred():
        if time.monotonic() > DEADLINE:
            sys.exit("timed out waiting for " + what)
        idl.run()
        if pred():
            break
        poller = ovs.poller.Poller()
        idl.wait(poller)
        poller.timer_wait(100)
        poller.block()


def rows(idl):
    return sorted([r.name, r.cores] for r in idl.tables["Node"].rows.values())


helper = ovs.db.idl.SchemaHelper(schema_file)
helper.register_all()
idl = ovs.db.idl.Idl(remote, helper)
run_until(idl, lambda: idl.has_ever_connected() and len(idl.tables["Node"].rows) > 0, "initial sync")
report = {"initial": rows(idl)}


def commit(build):
    txn = ovs.db.idl.Transaction(idl)
    build(txn)
    while True:
        status = txn.commit()
        if status != ovs.db.idl.Transaction.INCOMPLETE:
            return status
        if time.monotonic() > DEADLINE:
            sys.exit("timed out waiting for transaction commit")
        idl.run()
        poller = ovs.poller.Poller()
        idl.wait(poller)
        txn.wait(poller)
        poller.timer_wait(100)
        poller.block()


def insert(txn):
    row = txn.insert(idl.tables["Node"])
    row.name = "from-idl"
    row.cores = 7


report["commit"] = commit(insert)
run_until(idl, lambda: len(idl.tables["Node"].rows) == 2, "own insert to appear")
report["after_commit"] = rows(idl)

# A change made by another client reaches the IDL through its monitor.
subprocess.run(["ovsdb-client", "transact", remote,
                json.dumps(["Test", {"op": "insert", "table": "Node",
                                     "row": {"name": "ext", "cores": 9}}])],
               check=True, stdout=subprocess.DEVNULL)
run_until(idl, lambda: any(r.name == "ext" for r in idl.tables["Node"].rows.values()), "external insert")
ext = [r for r in idl.tables["Node"].rows.values() if r.name == "ext"][0]
report["external_update_seen"] = [ext.name, ext.cores]


def delete(txn):
    for r in list(idl.tables["Node"].rows.values()):
        if r.name == "from-idl":
            r.delete()


report["delete"] = commit(delete)
run_until(idl, lambda: len(idl.tables["Node"].rows) == 2, "delete to appear")
idl.close()
print(json.dumps(report))
