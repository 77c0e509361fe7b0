-- @description: Per doula and month (America/New_York): clients served, hours by type, hours marked available, and utilisation (hours worked / hours available). Availability windows count in the month they start.
WITH worked AS (
    SELECT doula_key, month,
           count(DISTINCT client_key) AS clients,
           sum(duration_hours) FILTER (WHERE type = 'prenatal') AS prenatal_hours,
           sum(duration_hours) FILTER (WHERE type = 'postpartum') AS postpartum_hours,
           sum(duration_hours) FILTER (WHERE type NOT IN ('prenatal', 'postpartum')) AS other_hours,
           sum(duration_hours) AS hours
    FROM marts.fct_hours
    GROUP BY doula_key, month
),
available AS (
    SELECT pseudonym(doula_id) AS doula_key,
           CAST(date_trunc('month', start_at AT TIME ZONE 'America/New_York') AS DATE) AS month,
           sum((date_part('epoch', end_at) - date_part('epoch', start_at)) / 3600.0) AS available_hours
    FROM raw.doula_availability
    WHERE lower(trim(availability_status)) = 'available'
    GROUP BY 1, 2
)
SELECT
    coalesce(w.doula_key, a.doula_key) AS doula_key,
    coalesce(w.month, a.month) AS month,
    coalesce(w.clients, 0) AS clients,
    CAST(coalesce(w.prenatal_hours, 0) AS DECIMAL(10, 2)) AS prenatal_hours,
    CAST(coalesce(w.postpartum_hours, 0) AS DECIMAL(10, 2)) AS postpartum_hours,
    CAST(coalesce(w.other_hours, 0) AS DECIMAL(10, 2)) AS other_hours,
    CAST(coalesce(w.hours, 0) AS DECIMAL(10, 2)) AS hours,
    CAST(coalesce(a.available_hours, 0) AS DECIMAL(10, 2)) AS available_hours,
    CAST(coalesce(w.hours, 0) AS DOUBLE) / nullif(a.available_hours, 0) AS utilization
FROM worked w
FULL OUTER JOIN available a ON a.doula_key = w.doula_key AND a.month = w.month
