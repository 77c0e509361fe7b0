-- @description: One row per client, pseudonymised: a keyed hash instead of the id and client number, and no names, contacts, addresses, dates of birth or health details. Status normalised; when each lifecycle stage was first reached.
-- Stage times come from the CRM's status-change activities; `lead` is the client's creation.
WITH changes AS (
    SELECT client_id,
           lower(trim(regexp_match(metadata, '"to"\s*:\s*"([^"]*)"')[1])) AS stage,
           "timestamp" AS at
    FROM raw.client_activities
    WHERE type = 'status_change'
),
reached AS (
    SELECT client_id,
           min(CASE WHEN stage = 'contacted' THEN at END) AS contacted_at,
           min(CASE WHEN stage = 'matched' THEN at END) AS matched_at,
           min(CASE WHEN stage = 'interviewing' THEN at END) AS interviewing_at,
           min(CASE WHEN stage = 'follow up' THEN at END) AS follow_up_at,
           min(CASE WHEN stage = 'contract' THEN at END) AS contract_at,
           min(CASE WHEN stage = 'active' THEN at END) AS active_at,
           min(CASE WHEN stage = 'complete' THEN at END) AS complete_at,
           min(CASE WHEN stage = 'not hired' THEN at END) AS not_hired_at
    FROM changes
    GROUP BY client_id
)
SELECT
    pseudonym(c.id) AS client_key,
    -- Legacy values: `pending` was a lead not yet worked or just contacted, `customer` an active
    -- or finished client; the stage history tells which.
    CASE lower(trim(c.status))
        WHEN 'pending' THEN CASE WHEN r.contacted_at IS NOT NULL THEN 'contacted' ELSE 'lead' END
        WHEN 'customer' THEN CASE WHEN r.complete_at IS NOT NULL THEN 'complete' ELSE 'active' END
        ELSE lower(trim(c.status))
    END AS status,
    c.created_at AS lead_at,
    r.contacted_at,
    r.matched_at,
    r.interviewing_at,
    r.follow_up_at,
    r.contract_at,
    r.active_at,
    r.complete_at,
    r.not_hired_at,
    CAST(date_trunc('month', c.created_at AT TIME ZONE 'America/New_York') AS DATE) AS intake_month,
    c.referral_source,
    c.service_needed,
    c.payment_method,
    c.client_age_range AS age_range,
    c.annual_income AS income_band,
    c.primary_language AS language,
    c.state,
    lower(trim(c.portal_status)) AS portal_status
FROM raw.phi_clients c
LEFT JOIN reached r ON r.client_id = c.id
