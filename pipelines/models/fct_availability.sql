-- @description: One row per window a doula marked herself available: its start and its length in hours. Absences and their reasons stay in raw (a reason is personal).
SELECT
    id AS availability_id,
    pseudonym(doula_id) AS doula_key,
    start_at,
    end_at,
    CAST((date_part('epoch', end_at) - date_part('epoch', start_at)) / 3600.0 AS DECIMAL(8, 2)) AS hours
FROM raw.doula_availability
WHERE lower(trim(availability_status)) = 'available'
