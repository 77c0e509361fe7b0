//! One slot of a report, delivered once: each recipient's message is claimed in the delivery
//! ledger (`pipeline::runlog`) under a Message-ID fixed by the report, the slot and the address,
//! then made (once per role the recipients see it as), handed to the mail server and marked sent.
//! A slot taken up again after a crash sends only what was not marked sent; a message found
//! `sending` is sent again with the same Message-ID and marked a possible repeat. Failures that may
//! pass are left for the caller's next attempt; refusals and last attempts are final and the
//! administrators are told. It does not decide when slots come (that is [`super::job`]).

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use lettre::Address;
use sha2::Digest;

use super::email::{Letter, MailError, Mailer};
use super::{Recipient, Report, ReportError};
use crate::auth::{Auth, AuthError, Role};
use crate::dashboard::{Dashboard, Sources};
use crate::pipeline::runlog::{Delivery, DeliveryState, RunLog, RunLogError};
use crate::query::engine::Caller;

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error(transparent)]
    Ledger(#[from] RunLogError),
    #[error("report {report}: the users of role {role}: {source}")]
    Users {
        report: String,
        role: Role,
        #[source]
        source: AuthError,
    },
    #[error("report {report}: {address:?} is not an address the mail library accepts: {reason}")]
    Address { report: String, address: String, reason: String },
    #[error("report {report}: {source}")]
    Mail {
        report: String,
        #[source]
        source: MailError,
    },
    #[error(
        "report {0}: nobody to send it to (no address, and no active user of its recipient roles has an address as name)"
    )]
    NoRecipients(String),
}

/// What a delivery needs from the server or the CLI.
pub struct Outbox<'a> {
    pub sources: Sources<'a>,
    pub auth: &'a Auth,
    pub log: &'a RunLog,
    pub mailer: &'a Mailer,
    /// The base of links to the live dashboard.
    pub public_url: &'a str,
}

/// One slot to deliver.
pub struct Slot<'a> {
    pub dashboard: &'a Dashboard,
    pub report: &'a Report,
    /// The schedule time (a send on request takes the time of the request).
    pub slot: DateTime<Utc>,
    /// `schedule`, `cli` or `api`.
    pub trigger: &'a str,
    pub audience: Audience<'a>,
    /// The day the report is for; the slot's day in the report's time zone when not given.
    pub day: Option<NaiveDate>,
    /// No attempt follows this one: failures are final and reported.
    pub last_attempt: bool,
    /// An alert's message, when the report is an alert.
    pub notice: Option<&'a super::alert::Notice>,
}

/// Whom a slot's messages go to.
#[derive(Debug, Clone, Copy)]
pub enum Audience<'a> {
    /// The report's recipients.
    Recipients,
    /// These addresses only, with the report's role's view.
    Addresses(&'a [Address]),
    /// Those the ledger holds for the slot and has not sent to (a slot begun before a crash).
    Ledger,
}

/// How a slot stands after an attempt.
#[derive(Debug)]
pub struct Outcome {
    /// The slot's ledger rows.
    pub deliveries: Vec<Delivery>,
    /// Why a later attempt is needed, when one is (the mail server was unavailable, or the report
    /// could not be made and this was not the last attempt).
    pub retry: Option<String>,
}

/// The job name under which a report's slots are scheduled and delivered.
pub fn job_name(report: &Report) -> String {
    format!("report:{}", report.spec.name)
}

/// The Message-ID of `report`'s message for `slot` to `recipient`: the same on every attempt.
pub fn message_id(report: &Report, slot: DateTime<Utc>, recipient: &str, domain: &str) -> String {
    let digest = sha2::Sha256::digest(recipient.to_ascii_lowercase().as_bytes());
    format!("<{}.{}.{}@{domain}>", report.spec.name, slot.format("%Y%m%dT%H%M%S%3fZ"), &hex::encode(digest)[..16])
}

/// The day of `slot` in the report's time zone: the day its relative filters count from.
pub fn slot_day(report: &Report, slot: DateTime<Utc>) -> NaiveDate {
    slot.with_timezone(&report.schedule.timezone).date_naive()
}

/// The addresses a report goes to, each with the role whose view it gets: the report's role for
/// addresses; for a role's users (those whose name is an address), the one of the two roles that
/// sees less.
async fn recipients(auth: &Auth, report: &Report) -> Result<Vec<(Address, Role)>, DeliverError> {
    let name = &report.spec.name;
    let mut audience: BTreeMap<Address, Role> = BTreeMap::new();
    let mut add = |address: Address, role: Role| {
        let role = match audience.get(&address) {
            Some(known) => Role::seeing_less(*known, role),
            None => role,
        };
        audience.insert(address, role);
    };
    let mut users = None;
    for recipient in &report.recipients {
        match recipient {
            Recipient::Address(text) => {
                let address = text.parse().map_err(|e: lettre::address::AddressError| DeliverError::Address {
                    report: name.clone(),
                    address: text.clone(),
                    reason: e.to_string(),
                })?;
                add(address, report.role);
            }
            Recipient::Role(role) => {
                if users.is_none() {
                    let listed = auth.users().await.map_err(|source| DeliverError::Users {
                        report: name.clone(),
                        role: *role,
                        source,
                    })?;
                    users = Some(listed);
                }
                for user in users.iter().flatten().filter(|u| u.role == *role && !u.disabled) {
                    if let Ok(address) = user.name.parse() {
                        add(address, Role::seeing_less(report.role, *role));
                    }
                }
            }
        }
    }
    if audience.is_empty() {
        return Err(DeliverError::NoRecipients(name.clone()));
    }
    Ok(audience.into_iter().collect())
}

/// Delivers what of `slot` is not delivered yet; see the module's documentation.
pub async fn deliver(outbox: &Outbox<'_>, slot: &Slot<'_>) -> Result<Outcome, DeliverError> {
    let report = slot.report;
    let name = &report.spec.name;
    let job = job_name(report);
    let mail_err = |source: MailError| DeliverError::Mail { report: name.clone(), source };
    let audience = match slot.audience {
        Audience::Recipients => recipients(outbox.auth, report).await?,
        Audience::Addresses(to) => to.iter().map(|a| (a.clone(), report.role)).collect(),
        Audience::Ledger => Vec::new(),
    };
    let domain = outbox.mailer.domain();
    let messages: Vec<(String, String, String)> = audience
        .iter()
        .map(|(address, role)| {
            (address.to_string(), message_id(report, slot.slot, address.as_ref(), domain), role.name().to_string())
        })
        .collect();
    let claimed = outbox.log.claim_deliveries(&job, slot.slot, slot.trigger, &messages)?;
    let mark = |d: &Delivery, state: DeliveryState, detail: Option<&str>| {
        outbox.log.set_delivery(&job, slot.slot, &d.recipient, state, detail)
    };
    let mut by_role: BTreeMap<Role, Vec<(&Delivery, Address)>> = BTreeMap::new();
    for delivery in claimed.iter().filter(|d| d.state.pending()) {
        match (Role::parse(&delivery.view), delivery.recipient.parse::<Address>()) {
            (Some(role), Ok(address)) => by_role.entry(role).or_default().push((delivery, address)),
            _ => mark(delivery, DeliveryState::Failed, Some("the ledger's recipient or view does not read back"))?,
        }
    }
    let day = slot.day.unwrap_or_else(|| slot_day(report, slot.slot));
    let link = link(outbox.public_url, slot.dashboard, report, day);
    let letter = Letter { dashboard: slot.dashboard, report, link, day, notice: slot.notice };
    let warning = super::freshness_warning(outbox.log, report, super::data_due(slot.dashboard, report, day))?;
    let mut retry = None;
    let mut failures: Vec<String> = Vec::new();
    for (role, group) in by_role {
        let caller = Caller { user: job.clone(), scope: role.name().into(), origin: "report", ..Caller::cli() };
        let rendered =
            match super::render(&outbox.sources, slot.dashboard, report, day, Utc::now(), &caller, warning.clone())
                .await
            {
                Ok(rendered) => rendered,
                Err(e) => {
                    not_made(outbox, slot, &group, &e, &mut retry, &mut failures).await?;
                    continue;
                }
            };
        #[cfg(feature = "fault-points")]
        crate::progress::fault::pause_at("report-rendered");
        for (delivery, address) in group {
            let message =
                outbox.mailer.report_message(&letter, &rendered, &address, &delivery.message_id).map_err(mail_err)?;
            mark(delivery, DeliveryState::Sending, None)?;
            match outbox.mailer.send(message).await {
                Ok(()) => {
                    #[cfg(feature = "fault-points")]
                    crate::progress::fault::pause_at("report-accepted");
                    mark(delivery, DeliveryState::Sent, None)?;
                    // Data left the system: who received which report, with which role's view.
                    outbox.auth.audit().record(crate::auth::audit::Event {
                        user: job.clone(),
                        role: role.name().into(),
                        origin: "report".into(),
                        request_id: delivery.message_id.clone(),
                        action: "report.sent".into(),
                        detail: format!("{} ({}) to {}", job, slot.trigger, delivery.recipient),
                        outcome: "ok".into(),
                        ..crate::auth::audit::Event::now()
                    });
                }
                Err(e) if e.is_permanent() || slot.last_attempt => {
                    mark(delivery, DeliveryState::Failed, Some(&e.to_string()))?;
                    failures.push(format!("{}: {e}", delivery.recipient));
                }
                Err(e) => {
                    mark(delivery, DeliveryState::Retrying, Some(&e.to_string()))?;
                    retry = Some(e.to_string());
                }
            }
        }
    }
    if !failures.is_empty() {
        tell_admins(outbox, slot, &failures).await;
    }
    let deliveries = outbox.log.slot_deliveries(&job, slot.slot)?;
    Ok(Outcome { deliveries, retry })
}

/// The report could not be made for `group`: another attempt follows, or (on the last) each
/// recipient is told so, in place of the report and under its Message-ID, and so are the admins.
async fn not_made(
    outbox: &Outbox<'_>,
    slot: &Slot<'_>,
    group: &[(&Delivery, Address)],
    error: &ReportError,
    retry: &mut Option<String>,
    failures: &mut Vec<String>,
) -> Result<(), DeliverError> {
    let job = job_name(slot.report);
    if !slot.last_attempt {
        for (delivery, _) in group {
            outbox.log.set_delivery(
                &job,
                slot.slot,
                &delivery.recipient,
                DeliveryState::Retrying,
                Some(&error.to_string()),
            )?;
        }
        *retry = Some(error.to_string());
        return Ok(());
    }
    let title = &slot.dashboard.file.title;
    for (delivery, address) in group {
        let body = format!(
            "The report {} ({title}) due {} could not be made, so it is not attached:\n\n{error}\n\nThe \
             administrators have been told.\n",
            slot.report.spec.name,
            slot.slot.with_timezone(&slot.report.schedule.timezone).format("%b %-d, %Y %H:%M %Z"),
        );
        let subject = format!("{title}: the report could not be made");
        let told = match outbox.mailer.notice(address, &delivery.message_id, &subject, body) {
            Ok(message) => {
                outbox.mailer.send(message).await.map(|()| "the recipient was told so").map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        let detail = match told {
            Ok(told) => format!("not made: {error}; {told}"),
            Err(e) => format!("not made: {error}; telling the recipient failed too: {e}"),
        };
        outbox.log.set_delivery(&job, slot.slot, &delivery.recipient, DeliveryState::Failed, Some(&detail))?;
    }
    failures.push(format!("the report could not be made: {error}"));
    Ok(())
}

/// Tells the administrators (`smtp.admins`) what of `slot` failed for good. A failure to tell them
/// is logged: the ledger holds the failures either way.
async fn tell_admins(outbox: &Outbox<'_>, slot: &Slot<'_>, failures: &[String]) {
    let name = &slot.report.spec.name;
    let body = format!(
        "Report {name} (slot {}, {}) was not delivered to everyone:\n\n{}\n\nThe delivery ledger: sokana report \
         deliveries {name}\n",
        slot.slot.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        slot.trigger,
        failures.iter().map(|f| format!("- {f}")).collect::<Vec<_>>().join("\n"),
    );
    let subject = format!("Sokana: report {name} was not delivered");
    for (i, admin) in outbox.mailer.admins().iter().enumerate() {
        let id = message_id(
            slot.report,
            slot.slot,
            &format!("admin-notice-{i}-{}", Utc::now().timestamp_millis()),
            outbox.mailer.domain(),
        );
        let sent = match outbox.mailer.notice(admin, &id, &subject, body.clone()) {
            Ok(message) => outbox.mailer.send(message).await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            tracing::error!(report = %name, admin = %admin, error = %e, "could not tell an administrator of a failed delivery");
        }
    }
    tracing::error!(report = %name, failures = failures.len(), "report not delivered to everyone");
}

/// The live dashboard with the report's filter values, its date range as the dates the report
/// covers (a relative `last_week` would move on by the time the message is read).
fn link(public_url: &str, dashboard: &Dashboard, report: &Report, day: NaiveDate) -> String {
    let range = crate::dashboard::Selection::from_pairs(dashboard, report.filter_pairs(), day)
        .ok()
        .and_then(|s| s.range.map(|(name, _, range)| (name, format!("{}..{}", range.from, range.to))));
    let pairs = report.filter_pairs().into_iter().map(|(name, value)| match &range {
        Some((range_name, dates)) if range_name == name => (name, dates.as_str()),
        _ => (name, value),
    });
    let query: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
    let base = format!("{public_url}/dashboards/{}", dashboard.id);
    if query.is_empty() { base } else { format!("{base}?{query}") }
}

#[cfg(test)]
mod tests {
    use chrono::{Datelike, TimeZone};

    use super::*;
    use crate::pipeline::schedule::{CatchUpPlan, next_slot, plan_catch_up};
    use crate::pipeline::spec::CatchUp;

    fn report(schedule: &str, zone: &str) -> Report {
        let text = format!(
            "title = \"T\"\n[[filters]]\nname = \"period\"\nkind = \"date_range\"\n[[panels]]\nid = \"p\"\n\
             title = \"P\"\nchart = \"kpi\"\nsql = \"SELECT 1 AS n\"\n[[reports]]\nname = \"weekly\"\n\
             schedule = \"{schedule}\"\ntimezone = \"{zone}\"\nrole = \"manager\"\nformats = [\"pdf\"]\n\
             filters = {{ period = \"last_week\" }}\ncatch_up = \"latest\"\n"
        );
        let dashboard = Dashboard::parse(std::path::Path::new("t.toml"), &text).expect("dashboard");
        dashboard.reports[0].clone()
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).single().expect("a time")
    }

    #[test]
    fn the_weekly_report_keeps_8am_new_york_across_both_changes() {
        let weekly = report("0 8 * * MON", "America/New_York");
        // Clocks went forward on Sunday March 8, 2026: Monday 08:00 EDT is 12:00 UTC (13:00 before).
        assert_eq!(next_slot(&weekly.schedule, utc(2026, 3, 1, 0, 0)), Some(utc(2026, 3, 2, 13, 0)));
        assert_eq!(next_slot(&weekly.schedule, utc(2026, 3, 6, 0, 0)), Some(utc(2026, 3, 9, 12, 0)));
        // They went back on Sunday November 1: Monday 08:00 EST is 13:00 UTC again.
        assert_eq!(next_slot(&weekly.schedule, utc(2026, 10, 30, 0, 0)), Some(utc(2026, 11, 2, 13, 0)));
        for slot in [utc(2026, 3, 9, 12, 0), utc(2026, 11, 2, 13, 0)] {
            assert_eq!(slot_day(&weekly, slot).weekday(), chrono::Weekday::Mon);
        }
    }

    #[test]
    fn a_slot_counts_its_day_in_the_reports_zone() {
        // Sunday 20:30 in Los Angeles is already Monday in UTC: the report is Sunday's.
        let sunday = report("30 20 * * SUN", "America/Los_Angeles");
        let slot = next_slot(&sunday.schedule, utc(2026, 3, 6, 0, 0)).expect("a slot");
        assert_eq!(slot, utc(2026, 3, 9, 3, 30));
        assert_eq!(slot_day(&sunday, slot), NaiveDate::from_ymd_opt(2026, 3, 8).expect("date"));
    }

    #[test]
    fn slots_missed_while_down_are_sent_once_for_the_latest() {
        let weekly = report("0 8 * * MON", "America/New_York");
        // Down from just after the slot of November 2 until Friday November 20: two slots missed.
        let plan =
            plan_catch_up(&weekly.schedule, CatchUp::Latest, Some(utc(2026, 11, 2, 13, 0)), utc(2026, 11, 20, 9, 0));
        assert_eq!(plan, CatchUpPlan::RunLatest { missed: 2, latest: utc(2026, 11, 16, 13, 0) });
        let plan =
            plan_catch_up(&weekly.schedule, CatchUp::Skip, Some(utc(2026, 11, 2, 13, 0)), utc(2026, 11, 20, 9, 0));
        assert_eq!(
            plan,
            CatchUpPlan::Skip { missed: 2, first: utc(2026, 11, 9, 13, 0), latest: utc(2026, 11, 16, 13, 0) }
        );
    }

    #[test]
    fn message_ids_are_fixed_by_report_slot_and_recipient() {
        let weekly = report("0 8 * * MON", "America/New_York");
        let slot = utc(2026, 11, 2, 13, 0);
        let id = message_id(&weekly, slot, "a@example.org", "example.org");
        assert_eq!(id, message_id(&weekly, slot, "A@Example.org", "example.org"));
        assert!(id.starts_with("<weekly.20261102T130000000Z.") && id.ends_with("@example.org>"), "{id}");
        assert_ne!(id, message_id(&weekly, slot, "b@example.org", "example.org"));
        assert_ne!(id, message_id(&weekly, utc(2026, 11, 9, 13, 0), "a@example.org", "example.org"));
    }
}
