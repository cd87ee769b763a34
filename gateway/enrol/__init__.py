"""Enrolment backup and restore (issue 12): who is enrolled on each terminal and how, kept safe and put back.

    fpgw enrol backup / the daily job (daily.py) --> backup.py --driver ReadsEnrolments--> terminal
                                                     --seal (crypto.py)--> gateway.store.enrol
    fpgw enrol restore --> restore.py <-- gateway.store.enrol (open with the key) --WritesEnrolments--> new terminal
    fpgw enrol status  --> backup.status()
    fpgw enrol sync / the daily job --> sync.py: read a group's terminals --> plan_sync (pure) --> copy what
                       each lacks (restore's uid mapping and read-back check) --> memory in the kv table

An area beside polling: it calls drivers directly (only through the optional abilities of drivers/base.py)
and never at the same time as a poll of the same terminal (the daemon runs it under the poll scheduler's
per-device hold). Templates and passwords exist in the clear only in memory between the terminal and the
envelope; they never reach a log line, the forwarder or an API answer. docs/enrolment.md.
"""
