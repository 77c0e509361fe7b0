-- @description: One row per payment received, with its month (America/New_York) and the client's key where the payment or its contract names one.
-- @materialized: incremental
-- @partition_by: month
-- Payments only arrive, so a run usually recomputes the current month alone (a change to a
-- contract reaches every month through the join, and rebuilds the table).
SELECT
    p.id AS payment_id,
    p.txn_date,
    CAST(date_trunc('month', p.txn_date AT TIME ZONE 'America/New_York') AS DATE) AS month,
    p.amount,
    lower(trim(p.method)) AS method,
    lower(trim(p.gateway)) AS gateway,
    pseudonym(coalesce(p.client_id, k.client_id)) AS client_key,
    p.invoice_id,
    p.contract_id
FROM raw.payments p
LEFT JOIN raw.phi_contracts k ON k.id = p.contract_id
