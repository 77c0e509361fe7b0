-- @description: Open receivables (invoice balances) by days past due as of the build (America/New_York): current, 1-30, 31-60, 61-90, 90+.
WITH today AS (
    SELECT CAST(now() AT TIME ZONE 'America/New_York' AS DATE) AS d
),
open_invoices AS (
    SELECT i.balance_amount,
           CASE WHEN i.due_date < t.d THEN CAST(t.d - i.due_date AS INT) ELSE 0 END AS days_past_due
    FROM raw.phi_invoices i CROSS JOIN today t
    WHERE i.balance_amount > 0 AND lower(trim(i.status)) <> 'paid'
),
buckets (bucket_order, bucket, low, high) AS (
    VALUES (1, 'current', 0, 0), (2, '1-30', 1, 30), (3, '31-60', 31, 60), (4, '61-90', 61, 90), (5, '90+', 91, 2147483647)
)
SELECT
    b.bucket_order,
    b.bucket,
    count(o.balance_amount) AS invoices,
    CAST(coalesce(sum(o.balance_amount), 0) AS DECIMAL(14, 2)) AS balance
FROM buckets b
LEFT JOIN open_invoices o ON o.days_past_due BETWEEN b.low AND b.high
GROUP BY b.bucket_order, b.bucket
