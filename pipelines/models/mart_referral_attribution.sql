-- @description: Per referral source: leads, clients who signed a contract, conversion rate, and revenue received from those clients. Payments no client can be found for are one row, `(unattributed)`, so revenue adds up to all payments.
WITH contracted AS (
    SELECT DISTINCT client_key
    FROM marts.fct_contracts
    WHERE status IN ('signed', 'active', 'completed')
),
sources AS (
    SELECT client_key, coalesce(nullif(trim(referral_source), ''), '(unknown)') AS referral_source
    FROM marts.dim_clients
),
leads AS (
    SELECT s.referral_source, count(*) AS leads, count(k.client_key) AS contracts
    FROM sources s
    LEFT JOIN contracted k ON k.client_key = s.client_key
    GROUP BY 1
),
revenue AS (
    SELECT coalesce(s.referral_source, '(unattributed)') AS referral_source, sum(p.amount) AS revenue
    FROM marts.fct_payments p
    LEFT JOIN sources s ON s.client_key = p.client_key
    GROUP BY 1
)
SELECT
    coalesce(l.referral_source, r.referral_source) AS referral_source,
    coalesce(l.leads, 0) AS leads,
    coalesce(l.contracts, 0) AS contracts,
    CAST(coalesce(l.contracts, 0) AS DOUBLE) / nullif(l.leads, 0) AS conversion_rate,
    CAST(coalesce(r.revenue, 0) AS DECIMAL(14, 2)) AS revenue
FROM leads l
FULL OUTER JOIN revenue r ON r.referral_source = l.referral_source
