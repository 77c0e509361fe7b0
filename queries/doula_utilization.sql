-- @description: Hours worked against hours available per doula (pseudonymised key) in one month
-- @param month: date = 2024-01-01
-- @param min_utilization: float = 0
SELECT doula_key, clients, hours, available_hours, utilization
FROM marts.mart_doula_utilization
WHERE month = $month AND utilization >= $min_utilization
ORDER BY utilization DESC
