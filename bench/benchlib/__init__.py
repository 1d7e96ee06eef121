"""Helpers of bench/run.py (scripts/bench): processes, peers, the netns lab,
measurements and the report. Standard library only."""
