-- @description: Invoiced, collected and outstanding per month (America/New_York), from a month on
-- @param since: date = 2022-01-01
SELECT month, invoices, invoiced, payments, collected, outstanding
FROM marts.mart_revenue_monthly
WHERE month >= $since
ORDER BY month
