-- @description: Clients' due dates counted per month, with no key and no other detail: the births the collective has booked (a contract signed, care active or complete) and those of prospects still in the pipeline. A count per month names nobody; the dates themselves stay in raw (phi).
WITH due AS (
    SELECT CAST(date_trunc('month', CAST(due_date AS TIMESTAMP)) AS DATE) AS due_month,
           lower(trim(status)) AS status
    FROM raw.phi_clients
    WHERE due_date IS NOT NULL
)
SELECT
    due_month,
    -- Legacy `customer` was an active or finished client, `pending` a lead not yet worked.
    count(*) FILTER (WHERE status IN ('contract', 'active', 'complete', 'customer')) AS booked,
    count(*) FILTER (WHERE status IN ('lead', 'contacted', 'matched', 'interviewing', 'follow up', 'pending')) AS prospects
FROM due
GROUP BY due_month
