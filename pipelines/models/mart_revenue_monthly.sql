-- @description: Per month (America/New_York): invoiced (invoices issued), collected (payments received; the column's total equals the source's), and outstanding (what the month's invoices still owe today).
WITH invoiced AS (
    SELECT CAST(date_trunc('month', created_at AT TIME ZONE 'America/New_York') AS DATE) AS month,
           sum(total_amount) AS invoiced,
           sum(balance_amount) AS outstanding,
           count(*) AS invoices
    FROM raw.phi_invoices
    GROUP BY 1
),
collected AS (
    SELECT month, sum(amount) AS collected, count(*) AS payments
    FROM marts.fct_payments
    GROUP BY 1
)
SELECT
    coalesce(i.month, c.month) AS month,
    coalesce(i.invoices, 0) AS invoices,
    CAST(coalesce(i.invoiced, 0) AS DECIMAL(14, 2)) AS invoiced,
    coalesce(c.payments, 0) AS payments,
    CAST(coalesce(c.collected, 0) AS DECIMAL(14, 2)) AS collected,
    CAST(coalesce(i.outstanding, 0) AS DECIMAL(14, 2)) AS outstanding
FROM invoiced i
FULL OUTER JOIN collected c ON c.month = i.month
