-- @description: One row per contract, with its client's key, normalised status and amounts.
SELECT
    id AS contract_id,
    pseudonym(client_id) AS client_key,
    lower(trim(status)) AS status,
    service_type,
    total_amount,
    deposit_amount,
    total_hours,
    hourly_rate,
    signed_at,
    created_at,
    CAST(date_trunc('month', signed_at AT TIME ZONE 'America/New_York') AS DATE) AS signed_month
FROM raw.phi_contracts
