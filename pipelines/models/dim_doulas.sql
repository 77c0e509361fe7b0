-- @description: One row per doula, pseudonymised (a keyed hash instead of the id; no name, email or phone).
SELECT
    pseudonym(id) AS doula_key,
    city,
    state,
    languages,
    lower(trim(account_status)) AS account_status,
    created_at
FROM raw.doulas
