"""Scheduling: the daemon (APScheduler 3.x) and the crontab emitter run the same commands.

cron.py reads cron expressions and the policy's zone; runner.py runs one strategy (locks, log
line, status file, shared by the daemon and `schedule exec`); daemon.py schedules the runs and
supervises the binlog shipper; crontab.py writes the same runs as /etc/cron.d lines; state.py
holds the local paths, locks and status file; plan.py says what a policy implies (next runs,
worst-case loss window); checks.py checks a policy beyond its types.
"""
