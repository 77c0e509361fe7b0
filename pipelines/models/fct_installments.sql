-- @description: One row per installment of a payment plan, with its contract, client and days overdue as of the build (America/New_York dates).
SELECT
    i.id AS installment_id,
    i.schedule_id,
    s.contract_id,
    pseudonym(k.client_id) AS client_key,
    i.amount,
    i.due_date,
    lower(trim(i.status)) AS status,
    lower(trim(i.payment_type)) AS payment_type,
    i.paid_at,
    CASE
        WHEN i.paid_at IS NULL AND lower(trim(i.status)) NOT IN ('paid', 'cancelled')
             AND i.due_date < CAST(now() AT TIME ZONE 'America/New_York' AS DATE)
        THEN CAST(CAST(now() AT TIME ZONE 'America/New_York' AS DATE) - i.due_date AS INT)
        ELSE 0
    END AS days_overdue
FROM raw.payment_installments i
LEFT JOIN raw.payment_schedules s ON s.id = i.schedule_id
LEFT JOIN raw.phi_contracts k ON k.id = s.contract_id
