//! Deterministic synthetic Sokana data: five years of a doula collective (scale 1 ≈ 1,500 clients),
//! with the lifecycle, seasonality, price rules and messiness of `domain.md`. Every name, email and
//! health note is invented; the same seed always gives the same rows.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use uuid::Uuid;

use super::schema::{self, TableDef};

/// A value to write into the operational database.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Text(String),
    Int(i64),
    Uuid(Uuid),
    /// A `numeric(_, 2)` amount in cents.
    Money(i64),
    Bool(bool),
    Date(NaiveDate),
    Ts(DateTime<Utc>),
    TextArray(Vec<String>),
    Json(String),
}

pub type Row = Vec<Value>;

/// What the generator hands to a writer, in order.
pub enum Output {
    Rows(&'static TableDef, Vec<Row>),
    /// Rows (identified by their primary-key values) deleted after insertion, as the CRM's hard
    /// deletes do.
    Delete(&'static TableDef, Vec<Row>),
}

/// The first and the last instant of the generated history.
pub fn history_start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2021, 11, 1, 0, 0, 0).single().unwrap_or_default()
}
pub fn history_end() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).single().unwrap_or_default()
}

const CLIENTS_PER_SCALE: f64 = 1500.0;
const BATCH_ROWS: usize = 20_000;

const FIRST_NAMES: &[&str] = &[
    "Avery", "Jordan", "Maya", "Imani", "Sofia", "Leah", "Nia", "Priya", "Rosa", "Hana", "Keisha", "Elena", "Grace",
    "Zoe", "Amara", "Lucia", "Tamika", "Mei", "Fatima", "Chloe", "Ines", "Noor", "Riley", "Dana",
];
const LAST_NAMES: &[&str] = &[
    "Okafor", "Nguyen", "Garcia", "Johnson", "Patel", "Kim", "Williams", "Haddad", "Rossi", "Brown", "Mensah", "Lopez",
    "Cohen", "Silva", "Tanaka", "Walker", "Diaz", "Moreau", "Adeyemi", "Novak",
];
const CITIES: &[(&str, &str, &str)] = &[
    ("Detroit", "MI", "482"),
    ("Ann Arbor", "MI", "481"),
    ("Columbus", "OH", "432"),
    ("Chicago", "IL", "606"),
    ("Atlanta", "GA", "303"),
    ("Philadelphia", "PA", "191"),
    ("Brooklyn", "NY", "112"),
    ("Baltimore", "MD", "212"),
];
const STREETS: &[&str] = &["Maple", "Oak", "Cedar", "Elm", "Willow", "Lake", "Hill", "Park", "River"];
const HOSPITALS: &[&str] = &[
    "Riverside General",
    "St. Brigid Medical Center",
    "Lakeshore Women's Hospital",
    "University Hospital",
    "Northside Birth Center",
];
const LANGUAGES: &[&str] = &["English", "Spanish", "Arabic", "French", "Mandarin", "Haitian Creole"];
const SERVICES: &[(&str, u32)] = &[
    ("Labor Support", 42),
    ("Postpartum Support", 30),
    ("Perinatal Education", 6),
    ("First Night Care", 5),
    ("Lactation Support", 6),
    ("Photography", 2),
    ("Extended Postpartum Support", 6),
    ("Other", 3),
];
const REFERRALS: &[(&str, u32)] = &[
    ("Google", 28),
    ("Doula Match", 18),
    ("Former client", 12),
    ("Sokana Member", 10),
    ("Social Media", 17),
    ("Email Blast", 6),
    ("Other", 9),
];
const PAYMENT_METHODS: &[(&str, u32)] =
    &[("Self-Pay", 45), ("Commercial Insurance", 20), ("Private Insurance", 15), ("Medicaid", 20)];
const INSURERS: &[&str] = &["Blue Harbor Health", "Meridian Care", "Evergreen Mutual", "State Medicaid Plan"];
const AGE_RANGES: &[&str] = &["18-24", "25-29", "30-34", "35-39", "40+"];
const INCOME_BANDS: &[&str] = &["<25k", "25k-50k", "50k-75k", "75k-100k", "100k+", "prefer not to say"];
const RACE: &[&str] = &["Black", "White", "Hispanic or Latino", "Asian", "Middle Eastern", "Multiracial", "Declined"];
const PRONOUNS: &[&str] = &["she/her", "she/her", "she/her", "they/them", "he/him"];
const HEALTH_NOTES: &[&str] = &[
    "gestational diabetes, diet-controlled",
    "history of preterm labor",
    "mild anemia in second trimester",
    "previous cesarean, hoping for VBAC",
    "anxiety, seeing a counselor",
    "no significant history",
    "hypertension monitored by OB",
];
const ALLERGIES: &[&str] = &["none known", "penicillin", "latex", "peanuts", "sulfa drugs"];
const MEDICATIONS: &[&str] = &["prenatal vitamins", "iron supplement", "labetalol", "none", "levothyroxine"];

/// Lifecycle stages in order; `(status, probability of reaching it from the previous one,
/// days in the previous stage min..max)`.
const STAGES: &[(&str, f64, (i64, i64))] = &[
    ("lead", 1.0, (0, 0)),
    ("contacted", 0.88, (0, 4)),
    ("matched", 0.78, (2, 12)),
    ("interviewing", 0.86, (1, 8)),
    ("follow up", 0.82, (2, 14)),
    ("contract", 0.78, (3, 21)),
    ("active", 0.95, (5, 60)),
];

/// Generates the whole operational history and hands it to `out` in batches.
pub struct Generator<'a> {
    rng: ChaCha8Rng,
    scale: f64,
    out: &'a mut dyn FnMut(Output) -> Result<(), super::SourceError>,
    buffers: Vec<(&'static TableDef, Vec<Row>)>,
    invoice_seq: u64,
    payments: Vec<(DateTime<Utc>, Row)>,
    deleted_assignments: Vec<Row>,
}

#[derive(Clone, Copy)]
struct Doula {
    id: Uuid,
}

impl<'a> Generator<'a> {
    pub fn new(seed: u64, scale: f64, out: &'a mut dyn FnMut(Output) -> Result<(), super::SourceError>) -> Self {
        Generator {
            rng: ChaCha8Rng::seed_from_u64(seed),
            scale,
            out,
            buffers: Vec::new(),
            invoice_seq: 0,
            payments: Vec::new(),
            deleted_assignments: Vec::new(),
        }
    }

    /// Runs the generator to the end; returns the number of clients made.
    pub fn run(mut self) -> Result<u64, super::SourceError> {
        let admins = self.admins()?;
        let doulas = self.doulas()?;
        let mut clients = 0u64;
        for (month_start, count) in self.monthly_leads() {
            for _ in 0..count {
                clients += 1;
                let created = month_start + Duration::seconds(self.rng.random_range(0..28 * 86_400));
                self.client(clients, created, &doulas, &admins)?;
            }
        }
        self.payments.sort_by_key(|(ts, _)| *ts);
        for (i, (_, mut row)) in std::mem::take(&mut self.payments).into_iter().enumerate() {
            row[0] = Value::Int(i as i64 + 1);
            self.emit(&schema::PAYMENTS, row)?;
        }
        let (access, refresh) = (self.rng.random::<u128>(), self.rng.random::<u128>());
        self.emit(
            &schema::QUICKBOOKS_TOKENS,
            vec![
                Value::Int(1),
                Value::Text("9130355377861234".into()),
                Value::Text(format!("eyFAKE.access.{access:032x}")),
                Value::Text(format!("AB11FAKE{refresh:024x}")),
                Value::Ts(history_end() + Duration::hours(1)),
                Value::Ts(history_start()),
                Value::Ts(history_end()),
            ],
        )?;
        self.flush_all()?;
        let deleted = std::mem::take(&mut self.deleted_assignments);
        (self.out)(Output::Delete(&schema::DOULA_ASSIGNMENTS, deleted))?;
        Ok(clients)
    }

    fn emit(&mut self, table: &'static TableDef, row: Row) -> Result<(), super::SourceError> {
        debug_assert_eq!(row.len(), table.columns.len(), "{}", table.name);
        let slot = match self.buffers.iter().position(|(t, _)| t.name == table.name) {
            Some(i) => i,
            None => {
                self.buffers.push((table, Vec::with_capacity(BATCH_ROWS)));
                self.buffers.len() - 1
            }
        };
        self.buffers[slot].1.push(row);
        if self.buffers[slot].1.len() >= BATCH_ROWS {
            let rows = std::mem::replace(&mut self.buffers[slot].1, Vec::with_capacity(BATCH_ROWS));
            (self.out)(Output::Rows(table, rows))?;
        }
        Ok(())
    }

    fn flush_all(&mut self) -> Result<(), super::SourceError> {
        // Parents first, so a database with foreign keys accepts the children.
        for table in schema::TABLES {
            if let Some(i) = self.buffers.iter().position(|(t, _)| t.name == table.name) {
                let rows = std::mem::take(&mut self.buffers[i].1);
                if !rows.is_empty() {
                    (self.out)(Output::Rows(table, rows))?;
                }
            }
        }
        Ok(())
    }

    fn uuid(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(self.rng.random()).into_uuid()
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.random_range(0..items.len())]
    }

    fn weighted(&mut self, items: &[(&'static str, u32)]) -> &'static str {
        let total: u32 = items.iter().map(|(_, w)| w).sum();
        let mut roll = self.rng.random_range(0..total);
        for (item, weight) in items {
            if roll < *weight {
                return item;
            }
            roll -= weight;
        }
        items[items.len() - 1].0
    }

    /// Leads per month: 2 % monthly growth and a spring peak, summing to the scale's client count.
    fn monthly_leads(&mut self) -> Vec<(DateTime<Utc>, u64)> {
        let start = history_start();
        let months: Vec<DateTime<Utc>> = (0..60)
            .filter_map(|m| {
                let (y, mo) = (start.year() + (start.month0() as i32 + m) / 12, (start.month0() as i32 + m) % 12);
                Utc.with_ymd_and_hms(y, mo as u32 + 1, 1, 0, 0, 0).single()
            })
            .collect();
        let weights: Vec<f64> = months
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let season = 1.0 + 0.3 * (std::f64::consts::TAU * (m.month0() as f64 - 2.0) / 12.0).cos();
                1.02f64.powi(i as i32) * season
            })
            .collect();
        let total: f64 = weights.iter().sum();
        let clients = CLIENTS_PER_SCALE * self.scale;
        months
            .into_iter()
            .zip(weights)
            .map(|(m, w)| {
                let expected = clients * w / total;
                let mut n = expected.floor() as u64;
                if self.rng.random_bool(expected.fract()) {
                    n += 1;
                }
                (m, n)
            })
            .collect()
    }

    fn person(&mut self) -> (String, String, String, String) {
        let first = self.pick(FIRST_NAMES).to_string();
        let last = self.pick(LAST_NAMES).to_string();
        let email =
            format!("{}.{}{}@example.com", first.to_lowercase(), last.to_lowercase(), self.rng.random_range(1..10_000));
        let phone = format!("+1-555-01{:02}-{:04}", self.rng.random_range(0..100), self.rng.random_range(0..10_000));
        (first, last, email, phone)
    }

    fn admins(&mut self) -> Result<Vec<Uuid>, super::SourceError> {
        let n = 5 + (self.scale.sqrt() * 3.0) as usize;
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.uuid();
            let (first, last, email, _) = self.person();
            let created = history_start() + Duration::days(self.rng.random_range(0..365));
            let row = vec![
                Value::Uuid(id),
                Value::Text(format!("{first} {last}")),
                Value::Text(email),
                Value::Ts(created),
                Value::Ts(created + Duration::days(self.rng.random_range(0..900))),
            ];
            self.emit(&schema::ADMINS, row)?;
            ids.push(id);
        }
        Ok(ids)
    }

    fn doulas(&mut self) -> Result<Vec<Doula>, super::SourceError> {
        let n = ((40.0 * self.scale) as usize).max(3);
        let mut doulas = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.uuid();
            let (first, last, email, phone) = self.person();
            let (city, state, _) = self.pick(CITIES);
            let joined = history_start() + Duration::days(self.rng.random_range(-400..1500));
            let mut languages = vec!["English".to_string()];
            if self.rng.random_bool(0.35) {
                let extra = self.pick(&LANGUAGES[1..]).to_string();
                languages.push(extra);
            }
            let status = match self.rng.random_range(0..20) {
                0 => "inactive",
                1 => "pending",
                _ => "active",
            };
            let updated = (joined + Duration::days(self.rng.random_range(0..400))).min(history_end());
            self.emit(
                &schema::DOULAS,
                vec![
                    Value::Uuid(id),
                    Value::Text(format!("{first} {last}")),
                    Value::Text(email),
                    Value::Text(phone),
                    Value::Text(city.into()),
                    Value::Text(state.into()),
                    Value::TextArray(languages),
                    Value::Text(status.into()),
                    Value::Ts(joined),
                    Value::Ts(updated),
                ],
            )?;
            self.availability(id, joined.max(history_start()))?;
            doulas.push(Doula { id });
        }
        Ok(doulas)
    }

    /// Two availability windows a week from the day a doula joins, some marked unavailable.
    fn availability(&mut self, doula: Uuid, from: DateTime<Utc>) -> Result<(), super::SourceError> {
        let mut week = from;
        while week < history_end() {
            for _ in 0..2 {
                let start = week + Duration::hours(self.rng.random_range(0..7 * 24));
                let end = start + Duration::hours(self.rng.random_range(4..13));
                let unavailable = self.rng.random_bool(0.15);
                let id = self.uuid();
                let reason = if unavailable {
                    Value::Text(self.pick(&["vacation", "personal", "training", "attending a birth"]).into())
                } else {
                    Value::Null
                };
                let created = start - Duration::days(self.rng.random_range(1..21));
                self.emit(
                    &schema::DOULA_AVAILABILITY,
                    vec![
                        Value::Uuid(id),
                        Value::Uuid(doula),
                        Value::Ts(start),
                        Value::Ts(end),
                        Value::Text(if unavailable { "unavailable" } else { "available" }.into()),
                        reason,
                        Value::Ts(created),
                        Value::Ts(created),
                    ],
                )?;
            }
            week += Duration::days(7);
        }
        Ok(())
    }

    /// A status as the CRM stores it: mostly canonical, sometimes legacy or in odd case.
    fn messy_status(&mut self, status: &str, created: DateTime<Utc>) -> String {
        let legacy_era = created.year() < 2023;
        if legacy_era && self.rng.random_bool(0.15) {
            match status {
                "lead" | "contacted" => return "pending".into(),
                "active" | "complete" => return "customer".into(),
                _ => {}
            }
        }
        match self.rng.random_range(0..100) {
            0..=3 => status.to_uppercase(),
            4..=6 => {
                let mut chars = status.chars();
                chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
            }
            _ => status.to_string(),
        }
    }

    fn client(
        &mut self,
        number: u64,
        created: DateTime<Utc>,
        doulas: &[Doula],
        admins: &[Uuid],
    ) -> Result<(), super::SourceError> {
        let id = self.uuid();
        let end = history_end();
        let staff = self.pick(admins);

        // Walk the lifecycle until the client drops out, stops at a stage still in progress, or
        // reaches `active`.
        let mut reached: Vec<(&'static str, DateTime<Utc>)> = vec![("lead", created)];
        let mut dropped_at = None;
        for &(stage, p, (lo, hi)) in &STAGES[1..] {
            let at = reached[reached.len() - 1].1
                + Duration::days(self.rng.random_range(lo..=hi))
                + Duration::minutes(self.rng.random_range(0..600));
            if at >= end {
                break;
            }
            if !self.rng.random_bool(p) {
                // Most drop-outs are closed as `not hired`; the rest go stale at their stage.
                let left = at + Duration::days(self.rng.random_range(0..10));
                if left < end && self.rng.random_bool(0.7) {
                    dropped_at = Some(left);
                }
                break;
            }
            reached.push((stage, at));
        }
        let due_date = (created + Duration::days(self.rng.random_range(60..240))).date_naive();
        let due_ts = Utc.from_utc_datetime(&due_date.and_hms_opt(12, 0, 0).unwrap_or_default());
        let service = self.weighted(SERVICES);
        let postpartum = matches!(service, "Postpartum Support" | "Extended Postpartum Support" | "First Night Care");
        let service_end = due_ts + Duration::days(if postpartum { self.rng.random_range(30..120) } else { 14 });
        let is_active = reached.last().map(|(s, _)| *s) == Some("active");
        if is_active && service_end < end {
            reached.push(("complete", service_end));
        }
        let (stage, stage_at) = match dropped_at {
            Some(at) => ("not hired", at),
            None => reached[reached.len() - 1],
        };
        let status = self.messy_status(stage, created);
        let matched_at = reached.iter().find(|(s, _)| *s == "matched").map(|(_, at)| *at);

        // Activities: one per status change, plus notes and contacts.
        let mut activity_times = Vec::new();
        let mut previous = None;
        let mut changes: Vec<(&str, DateTime<Utc>)> = reached.clone();
        if let Some(at) = dropped_at {
            changes.push(("not hired", at));
        }
        for (s, at) in &changes {
            let metadata = match previous {
                Some(from) => format!(r#"{{"from":"{from}","to":"{s}"}}"#),
                None => format!(r#"{{"to":"{s}"}}"#),
            };
            let desc = format!("Status changed to {s}");
            self.activity(id, staff, "status_change", desc, metadata, *at)?;
            activity_times.push(*at);
            previous = Some(*s);
        }
        let extra = self.rng.random_range(2..8);
        let last_change = stage_at;
        for _ in 0..extra {
            let at = created
                + Duration::minutes(self.rng.random_range(0..=(last_change - created).num_minutes().max(1) + 20_000));
            if at >= end {
                continue;
            }
            let (kind, desc) = match self.rng.random_range(0..5) {
                0 => ("note_added", format!("Client mentioned {}", self.pick(HEALTH_NOTES))),
                1 => ("contact_made", "Called client to follow up".to_string()),
                2 => ("appointment_scheduled", "Prenatal visit scheduled".to_string()),
                3 => ("profile_update", "Updated contact details".to_string()),
                _ => ("document_uploaded", "Uploaded intake form".to_string()),
            };
            self.activity(id, staff, kind, desc, "{}".into(), at)?;
            activity_times.push(at);
        }
        let updated = activity_times.iter().copied().max().unwrap_or(created).min(end);

        let (first, last, email, phone) = self.person();
        let (city, state, zip) = self.pick(CITIES);
        let payment_method = self.weighted(PAYMENT_METHODS);
        let insured = payment_method != "Self-Pay";
        let insurer = if insured { Value::Text(self.pick(INSURERS).into()) } else { Value::Null };
        let policy = if insured {
            Value::Text(format!("P{:09}", self.rng.random_range(0..1_000_000_000u64)))
        } else {
            Value::Null
        };
        let dob = NaiveDate::from_ymd_opt(
            1980 + self.rng.random_range(0..24),
            self.rng.random_range(1..=12),
            self.rng.random_range(1..=28),
        )
        .unwrap_or_default();
        let preferred =
            if self.rng.random_bool(0.2) { Value::Text(self.pick(FIRST_NAMES).into()) } else { Value::Null };
        let portal = match stage {
            "active" | "complete" => "active",
            "contract" => self.pick(&["invited", "active"]),
            "not hired" => self.pick(&["not_invited", "disabled"]),
            _ => "not_invited",
        };
        let row = vec![
            Value::Uuid(id),
            Value::Text(format!("CL-{number:05}")),
            Value::Text(first),
            Value::Text(last),
            preferred,
            Value::Text(email),
            Value::Text(phone),
            Value::Date(dob),
            Value::Text(format!("{} {} St", self.rng.random_range(1..9999), self.pick(STREETS))),
            Value::Text(city.into()),
            Value::Text(state.into()),
            Value::Text(format!("{zip}{:02}", self.rng.random_range(0..100))),
            Value::Text(self.pick(PRONOUNS).into()),
            Value::Text(if self.rng.random_bool(0.8) { "English" } else { self.pick(&LANGUAGES[1..]) }.into()),
            Value::Text(self.pick(RACE).into()),
            Value::Text(self.pick(AGE_RANGES).into()),
            Value::Text(self.pick(INCOME_BANDS).into()),
            Value::Date(due_date),
            Value::Int(self.rng.random_range(1..5)),
            Value::Int(if self.rng.random_bool(0.03) { 2 } else { 1 }),
            Value::Text(self.pick(&["hospital", "birth center", "home"]).into()),
            Value::Text(self.pick(HOSPITALS).into()),
            Value::Text(self.pick(&["OB-GYN", "midwife", "family physician"]).into()),
            Value::Text(self.pick(HEALTH_NOTES).into()),
            Value::Text(self.pick(ALLERGIES).into()),
            Value::Text(self.pick(MEDICATIONS).into()),
            Value::Text(self.weighted(REFERRALS).into()),
            Value::Text(service.into()),
            Value::Text(payment_method.into()),
            Value::Text(status),
            Value::Text(portal.into()),
            insurer,
            policy,
            Value::Ts(created),
            matched_at.map_or(Value::Null, Value::Ts),
            Value::Ts(created),
            Value::Ts(updated),
        ];
        self.emit(&schema::PHI_CLIENTS, row)?;

        // A matched client has a primary doula, sometimes a backup.
        let mut doula_ids = Vec::new();
        if let Some(at) = matched_at {
            let primary = self.pick(doulas).id;
            doula_ids.push(primary);
            self.assignment(id, primary, "primary", service, at)?;
            if self.rng.random_bool(0.3) {
                let backup = self.pick(doulas).id;
                if backup != primary {
                    self.assignment(id, backup, "backup", service, at)?;
                }
            }
        }
        let contract_at = reached.iter().find(|(s, _)| *s == "contract").map(|(_, at)| *at);
        if let Some(at) = contract_at {
            let completed = reached.iter().any(|(s, _)| *s == "complete");
            self.contract(id, at, service, postpartum, is_active, completed, due_ts)?;
            if is_active && !doula_ids.is_empty() {
                self.hours(id, doula_ids[0], postpartum, due_ts, service_end)?;
            }
        }
        Ok(())
    }

    fn activity(
        &mut self,
        client: Uuid,
        staff: Uuid,
        kind: &str,
        description: String,
        metadata: String,
        at: DateTime<Utc>,
    ) -> Result<(), super::SourceError> {
        let id = self.uuid();
        self.emit(
            &schema::CLIENT_ACTIVITIES,
            vec![
                Value::Uuid(id),
                Value::Uuid(client),
                Value::Uuid(staff),
                Value::Text(kind.into()),
                Value::Text(description),
                Value::Json(metadata),
                Value::Ts(at),
            ],
        )
    }

    fn assignment(
        &mut self,
        client: Uuid,
        doula: Uuid,
        role: &str,
        service: &str,
        at: DateTime<Utc>,
    ) -> Result<(), super::SourceError> {
        let role = if self.rng.random_bool(0.05) { Value::Null } else { Value::Text(role.into()) };
        let mut services = vec![service.to_string()];
        if self.rng.random_bool(0.25) {
            services.push(self.weighted(SERVICES).to_string());
        }
        let notes = if self.rng.random_bool(0.4) {
            Value::Text(format!("Client prefers evening visits; {}", self.pick(HEALTH_NOTES)))
        } else {
            Value::Null
        };
        let row = vec![
            Value::Uuid(client),
            Value::Uuid(doula),
            role,
            Value::TextArray(services),
            Value::Text(self.pick(HOSPITALS).into()),
            notes,
            Value::Ts(at),
            Value::Ts(at),
        ];
        if self.rng.random_bool(0.05) {
            self.deleted_assignments.push(vec![Value::Uuid(client), Value::Uuid(doula)]);
        }
        self.emit(&schema::DOULA_ASSIGNMENTS, row)
    }

    #[allow(clippy::too_many_arguments)]
    fn contract(
        &mut self,
        client: Uuid,
        at: DateTime<Utc>,
        service: &str,
        postpartum: bool,
        active: bool,
        completed: bool,
        due: DateTime<Utc>,
    ) -> Result<(), super::SourceError> {
        let end = history_end();
        let id = self.uuid();
        let (total, hours, rate) = if postpartum {
            let rate = self.pick(&[3000i64, 3500, 4000, 4500]);
            let hours = self.rng.random_range(5..=40) * 4;
            (hours * rate, Value::Money(hours * 100), Value::Money(rate))
        } else {
            (self.rng.random_range(36..=70) * 5000, Value::Null, Value::Null)
        };
        let deposit = total * self.rng.random_range(2..=10) * 5 / 100;
        let cancelled = !active && self.rng.random_bool(0.3);
        let signed = active || cancelled || self.rng.random_bool(0.6);
        let status = if completed {
            "completed"
        } else if cancelled {
            "cancelled"
        } else if active {
            "active"
        } else if signed {
            "signed"
        } else {
            self.pick(&["draft", "pending_signature"])
        };
        let signed_at = signed.then(|| at + Duration::days(self.rng.random_range(0..5)));
        let updated = signed_at.unwrap_or(at).min(end);
        self.emit(
            &schema::PHI_CONTRACTS,
            vec![
                Value::Uuid(id),
                Value::Uuid(client),
                Value::Text(status.into()),
                Value::Text(service.into()),
                Value::Money(total),
                Value::Money(deposit),
                hours,
                rate,
                signed_at.map_or(Value::Null, Value::Ts),
                Value::Ts(at),
                Value::Ts(updated),
            ],
        )?;
        if let Some(signed_at) = signed_at {
            self.schedule(client, id, signed_at, total, deposit, postpartum, cancelled, due)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn schedule(
        &mut self,
        client: Uuid,
        contract: Uuid,
        signed_at: DateTime<Utc>,
        total: i64,
        deposit: i64,
        postpartum: bool,
        cancelled: bool,
        due: DateTime<Utc>,
    ) -> Result<(), super::SourceError> {
        let end = history_end();
        let id = self.uuid();
        let n: i64 = self.rng.random_range(1..=12);
        let (frequency, step_days) = if n == 1 {
            ("one-time", 0)
        } else if self.rng.random_bool(0.6) {
            ("monthly", 30)
        } else if self.rng.random_bool(0.8) {
            ("biweekly", 14)
        } else {
            ("weekly", 7)
        };
        let start = signed_at.date_naive() + Duration::days(14);
        // Labor packages are paid off by week 36, four weeks before the due date.
        let latest = if postpartum { None } else { Some(due.date_naive() - Duration::days(28)) };
        let step = match latest {
            Some(latest) if n > 1 && start + Duration::days(step_days * (n - 1)) > latest => {
                ((latest - start).num_days() / (n - 1)).max(1)
            }
            _ => step_days,
        };
        let balance = total - deposit;
        let installment = balance / n;
        let end_date = start + Duration::days(step * (n - 1));
        let status = if cancelled {
            "cancelled"
        } else if Utc.from_utc_datetime(&end_date.and_hms_opt(0, 0, 0).unwrap_or_default()) < end {
            "completed"
        } else {
            "active"
        };
        self.emit(
            &schema::PAYMENT_SCHEDULES,
            vec![
                Value::Uuid(id),
                Value::Uuid(contract),
                Value::Money(total),
                Value::Money(deposit),
                Value::Money(installment),
                Value::Int(n),
                Value::Text(frequency.into()),
                Value::Date(start),
                Value::Date(end_date),
                Value::Text(status.into()),
                Value::Ts(signed_at),
                Value::Ts(signed_at),
            ],
        )?;
        self.installment(client, contract, id, deposit, signed_at.date_naive(), "deposit", signed_at, cancelled)?;
        for i in 0..n {
            let amount = if i == n - 1 { balance - installment * (n - 1) } else { installment };
            let kind = if i == n - 1 { "final" } else { "installment" };
            let due_date = start + Duration::days(step * i);
            self.installment(client, contract, id, amount, due_date, kind, signed_at, cancelled)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn installment(
        &mut self,
        client: Uuid,
        contract: Uuid,
        schedule: Uuid,
        amount: i64,
        due_date: NaiveDate,
        kind: &str,
        created: DateTime<Utc>,
        cancelled: bool,
    ) -> Result<(), super::SourceError> {
        let end = history_end();
        let id = self.uuid();
        let due_ts = Utc.from_utc_datetime(&due_date.and_hms_opt(17, 0, 0).unwrap_or_default());
        let roll = self.rng.random_range(0..100);
        let (status, paid_at) = if cancelled && kind != "deposit" {
            ("cancelled", None)
        } else if due_ts > end {
            (if due_ts < end + Duration::days(7) { "pending" } else { "upcoming" }, None)
        } else if roll < 86 {
            let paid = due_ts + Duration::hours(self.rng.random_range(-72..240));
            if paid < end { ("paid", Some(paid)) } else { ("pending", None) }
        } else if roll < 97 {
            ("overdue", None)
        } else {
            ("failed", None)
        };
        let updated = paid_at.unwrap_or(if due_ts < end { due_ts } else { created }).max(created).min(end);
        self.emit(
            &schema::PAYMENT_INSTALLMENTS,
            vec![
                Value::Uuid(id),
                Value::Uuid(schedule),
                Value::Money(amount),
                Value::Date(due_date),
                Value::Text(status.into()),
                Value::Text(kind.into()),
                Value::Bool(status == "overdue"),
                paid_at.map_or(Value::Null, Value::Ts),
                Value::Ts(created),
                Value::Ts(updated),
            ],
        )?;
        if status == "cancelled" || due_ts > end + Duration::days(30) {
            return Ok(());
        }
        // One invoice per installment that has come due; its status arrives in mixed case.
        self.invoice_seq += 1;
        let invoice = self.uuid();
        let paid = if paid_at.is_some() { amount } else { 0 };
        let invoice_status = match (status, self.rng.random_bool(0.3)) {
            ("paid", true) => "PAID",
            ("paid", false) => "paid",
            ("overdue", true) => "Overdue",
            ("overdue", false) => "overdue",
            ("failed", _) => "open",
            (_, true) => "OPEN",
            _ => "open",
        };
        let invoice_created = (due_ts - Duration::days(14)).max(created).min(end);
        self.emit(
            &schema::PHI_INVOICES,
            vec![
                Value::Uuid(invoice),
                Value::Uuid(client),
                Value::Text(format!("INV-{:06}", self.invoice_seq)),
                Value::Text(invoice_status.into()),
                Value::Money(amount),
                Value::Money(paid),
                Value::Money(amount - paid),
                Value::Date(due_date),
                Value::Ts(invoice_created),
                Value::Ts(updated.max(invoice_created)),
            ],
        )?;
        if let Some(paid_at) = paid_at {
            let method = self.pick(&["card", "card", "ach", "check", "cash"]);
            let gateway = match method {
                "card" | "ach" => self.pick(&["stripe", "quickbooks"]),
                _ => "manual",
            };
            let row = vec![
                Value::Null,
                Value::Ts(paid_at),
                Value::Money(amount),
                Value::Text(method.into()),
                Value::Text(gateway.into()),
                Value::Text(format!("txn_{:016x}", self.rng.random::<u64>())),
                if self.rng.random_bool(0.3) { Value::Null } else { Value::Uuid(client) },
                if self.rng.random_bool(0.4) { Value::Null } else { Value::Uuid(invoice) },
                Value::Uuid(contract),
                Value::Text(format!("{kind} payment")),
            ];
            self.payments.push((paid_at, row));
            // Now and then a payment arrives that nobody linked to anything.
            if self.rng.random_bool(0.03) {
                let at = paid_at + Duration::hours(self.rng.random_range(1..48));
                if at < end {
                    let row = vec![
                        Value::Null,
                        Value::Ts(at),
                        Value::Money(self.rng.random_range(1..40) * 500),
                        Value::Text("card".into()),
                        Value::Text("stripe".into()),
                        Value::Text(format!("txn_{:016x}", self.rng.random::<u64>())),
                        Value::Null,
                        Value::Null,
                        Value::Null,
                        Value::Text("unlinked payment".into()),
                    ];
                    self.payments.push((at, row));
                }
            }
        }
        Ok(())
    }

    /// Prenatal visits before the due date; postpartum shifts after it (or a labor attendance).
    fn hours(
        &mut self,
        client: Uuid,
        doula: Uuid,
        postpartum: bool,
        due: DateTime<Utc>,
        service_end: DateTime<Utc>,
    ) -> Result<(), super::SourceError> {
        let end = history_end();
        let mut shifts: Vec<(DateTime<Utc>, i64, Option<&str>)> = Vec::new();
        for _ in 0..self.rng.random_range(1..=3) {
            let start =
                due - Duration::days(self.rng.random_range(7..90)) + Duration::hours(self.rng.random_range(0..10));
            shifts.push((start, self.rng.random_range(60..150), Some("prenatal")));
        }
        if postpartum {
            let mut at = due + Duration::days(self.rng.random_range(1..7));
            while at < service_end {
                shifts.push((at, self.rng.random_range(3..6) * 60, Some("postpartum")));
                at += Duration::days(self.rng.random_range(2..5));
            }
        } else {
            shifts.push((
                due + Duration::hours(self.rng.random_range(-48..72)),
                self.rng.random_range(6..20) * 60,
                None,
            ));
        }
        for (start, minutes, kind) in shifts {
            let stop = start + Duration::minutes(minutes);
            if stop >= end {
                continue;
            }
            let kind = if kind.is_some() && self.rng.random_bool(0.05) { None } else { kind };
            let logged = stop + Duration::hours(self.rng.random_range(1..72));
            let id = self.uuid();
            self.emit(
                &schema::HOURS,
                vec![
                    Value::Uuid(id),
                    Value::Uuid(doula),
                    Value::Uuid(client),
                    Value::Ts(start),
                    Value::Ts(stop),
                    kind.map_or(Value::Null, |k| Value::Text(k.into())),
                    Value::Ts(logged.min(end)),
                    Value::Ts(logged.min(end)),
                ],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn generate(seed: u64, scale: f64) -> (HashMap<&'static str, Vec<Row>>, Vec<Row>) {
        let mut tables: HashMap<&'static str, Vec<Row>> = HashMap::new();
        let mut deleted = Vec::new();
        let mut out = |o: Output| {
            match o {
                Output::Rows(t, rows) => tables.entry(t.name).or_default().extend(rows),
                Output::Delete(_, keys) => deleted.extend(keys),
            }
            Ok(())
        };
        Generator::new(seed, scale, &mut out).run().unwrap();
        (tables, deleted)
    }

    fn col<'a>(table: &TableDef, row: &'a Row, name: &str) -> &'a Value {
        &row[table.column_index(name).unwrap()]
    }

    #[test]
    fn the_same_seed_gives_the_same_rows_and_another_seed_does_not() {
        let (a, da) = generate(9, 0.05);
        let (b, db) = generate(9, 0.05);
        assert_eq!(a, b);
        assert_eq!(da, db);
        let (c, _) = generate(10, 0.05);
        assert_ne!(a[&"phi_clients"], c[&"phi_clients"]);
    }

    #[test]
    fn data_is_messy_and_follows_the_price_rules() {
        let (tables, deleted) = generate(1, 0.5);
        let clients = &tables["phi_clients"];
        assert!((600..900).contains(&clients.len()), "{} clients at scale 0.5", clients.len());
        let statuses: Vec<&str> = clients
            .iter()
            .filter_map(|r| match col(&schema::PHI_CLIENTS, r, "status") {
                Value::Text(s) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        for expected in ["lead", "contacted", "not hired", "active", "complete", "pending", "customer"] {
            assert!(statuses.contains(&expected), "status {expected:?} never occurs");
        }
        assert!(statuses.iter().any(|s| s.chars().any(char::is_uppercase)), "mixed case statuses");
        assert!(!deleted.is_empty(), "some assignments are hard-deleted");
        let payments = &tables["payments"];
        assert!(payments.iter().any(|r| *col(&schema::PAYMENTS, r, "client_id") == Value::Null));
        assert!(payments.iter().any(|r| *col(&schema::PAYMENTS, r, "invoice_id") == Value::Null));
        let ids: Vec<i64> = payments
            .iter()
            .map(|r| match col(&schema::PAYMENTS, r, "id") {
                Value::Int(i) => *i,
                _ => 0,
            })
            .collect();
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "payment ids increase with time");

        let money = |v: &Value| match v {
            Value::Money(c) => *c,
            _ => 0,
        };
        for contract in &tables["phi_contracts"] {
            let t = &schema::PHI_CONTRACTS;
            let (total, deposit) = (money(col(t, contract, "total_amount")), money(col(t, contract, "deposit_amount")));
            assert!(deposit * 10 >= total && deposit * 2 <= total, "deposit 10–50 %: {deposit} of {total}");
            match (col(t, contract, "total_hours"), col(t, contract, "hourly_rate")) {
                (Value::Money(hours), Value::Money(rate)) => assert_eq!(total, hours * rate / 100),
                _ => assert!((180_000..=350_000).contains(&total), "labor package {total}"),
            }
        }
        let key = |v: &Value| match v {
            Value::Uuid(u) => *u,
            _ => Uuid::nil(),
        };
        let mut by_schedule: HashMap<Uuid, i64> = HashMap::new();
        for i in &tables["payment_installments"] {
            let t = &schema::PAYMENT_INSTALLMENTS;
            *by_schedule.entry(key(col(t, i, "schedule_id"))).or_default() += money(col(t, i, "amount"));
        }
        for s in &tables["payment_schedules"] {
            let t = &schema::PAYMENT_SCHEDULES;
            assert_eq!(by_schedule[&key(col(t, s, "id"))], money(col(t, s, "total_amount")), "installments add up");
        }
        let hour_types: Vec<&Value> = tables["hours"].iter().map(|r| col(&schema::HOURS, r, "type")).collect();
        assert!(hour_types.contains(&&Value::Text("prenatal".into())));
        assert!(hour_types.contains(&&Value::Text("postpartum".into())));
        assert!(hour_types.contains(&&Value::Null));
    }
}
