-- @description: One row per invoice, with its client's key, normalised status, amounts, due date and the month it was issued (America/New_York).
SELECT
    id AS invoice_id,
    pseudonym(client_id) AS client_key,
    lower(trim(status)) AS status,
    total_amount,
    paid_total_amount,
    balance_amount,
    due_date,
    created_at,
    CAST(date_trunc('month', created_at AT TIME ZONE 'America/New_York') AS DATE) AS month
FROM raw.phi_invoices
