-- @description: One row per logged shift: its length in hours, its type and its month (America/New_York).
SELECT
    id AS hours_id,
    pseudonym(doula_id) AS doula_key,
    pseudonym(client_id) AS client_key,
    coalesce(lower(trim(type)), 'unspecified') AS type,
    start_time,
    end_time,
    CAST((date_part('epoch', end_time) - date_part('epoch', start_time)) / 3600.0 AS DECIMAL(8, 2)) AS duration_hours,
    CAST(date_trunc('month', start_time AT TIME ZONE 'America/New_York') AS DATE) AS month
FROM raw.hours
