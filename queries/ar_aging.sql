-- @description: Open invoice balances by days overdue
SELECT bucket, invoices, balance
FROM marts.mart_ar_aging
ORDER BY bucket_order
