"""The audit trail: what a signal becomes, how it is stored, how it is queried.

- `subscribers`: receivers connected at module level to auth_log, v1_log, main_log and Flask's
  got_request_exception; they turn a signal plus the request (`events`) into an `AuditEvent`.
- `writer`: stores an event in its own transaction, before the response leaves, through
  `group_commit`; `chain` links the rows; `spool` holds what the database cannot take,
  `refusals` decides what it refused for its content.
- `listing`: the filters, visibility rule and keyset cursor of GET /v1/logs; `stats`: counts per
  bucket; `export`: every matching row as NDJSON or CSV.
- `verification` proves the trail intact (`cadence`: where periodic checkpoints are due),
  `anchors` signs its head on demand; `retention` purges old rows and keeps legal holds.
"""
