-- Jobs written by the first schema predate deadlines and notification tracking (their deadline_at is NULL,
-- which no later code writes). Mark the final ones as told, as the code that finished them did tell the member,
-- unless their hold is still open: a restart must still refund those, and then say so. Then give every such
-- job the default 20-minute deadline, so one in flight during the upgrade is finished rather than expired.

UPDATE jobs SET notified_at = updated_at
WHERE deadline_at IS NULL AND notified_at IS NULL AND state IN ('failed', 'cancelled', 'expired')
  AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.job_id = jobs.id AND h.state = 'held');

UPDATE jobs SET deadline_at = created_at + 1200 WHERE deadline_at IS NULL;
