"""The relay: the trail delivered to the systems security teams run (syslog collectors, webhooks,
files for a log shipper), at least once and in id order, each sink from its own durable cursor.
"""
