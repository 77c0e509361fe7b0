//! Reports as email: the message (a short plain-text and HTML body with the headline figures and
//! a link to the live dashboard, the PDF and CSV files attached, a Message-ID fixed by the caller)
//! and the SMTP connection that sends it (`[smtp]`: STARTTLS or implicit TLS, the password from the
//! environment). It sends one message when asked; what was sent is the ledger's business
//! ([`super::deliver`]).

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::Rendered;
use crate::config::SmtpConfig;
use crate::dashboard::Dashboard;
use crate::dashboard::reports::Report;

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("smtp.url: {0}")]
    Url(String),
    #[error("smtp.password_env: the environment variable {0} is not set (the password of smtp.url's user)")]
    Password(String),
    #[error("{0}")]
    Message(String),
    /// The server refused for good (a 5xx answer): another attempt would be refused too.
    #[error("the mail server refused it: {0}")]
    Refused(String),
    /// No connection, a timeout or a 4xx answer: a later attempt may pass.
    #[error("could not hand it to the mail server: {0}")]
    Unavailable(String),
}

impl MailError {
    pub fn is_permanent(&self) -> bool {
        !matches!(self, MailError::Unavailable(_))
    }
}

/// The SMTP connection and the addresses `[smtp]` names.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    admins: Vec<Address>,
    retry: crate::pipeline::spec::Retry,
}

impl Mailer {
    pub fn new(config: &SmtpConfig) -> Result<Mailer, MailError> {
        let url = url::Url::parse(&config.url).map_err(|e| MailError::Url(e.to_string()))?;
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.url).map_err(|e| MailError::Url(e.to_string()))?;
        if !url.username().is_empty() {
            let password =
                std::env::var(&config.password_env).map_err(|_| MailError::Password(config.password_env.clone()))?;
            builder = builder.credentials(Credentials::new(url.username().to_string(), password));
        }
        let transport = builder.timeout(Some(Duration::from_secs(config.timeout_seconds))).build();
        let from = config.from.parse().map_err(|e| MailError::Message(format!("smtp.from: {e}")))?;
        let admins = config
            .admins
            .iter()
            .map(|a| a.parse().map_err(|e| MailError::Message(format!("smtp.admins: {a:?}: {e}"))))
            .collect::<Result<_, _>>()?;
        let retry =
            crate::pipeline::spec::Retry { attempts: config.retries, delay: Duration::from_secs(config.retry_seconds) };
        Ok(Mailer { transport, from, admins, retry })
    }

    /// How a failed send is retried.
    pub fn retry(&self) -> crate::pipeline::spec::Retry {
        self.retry
    }

    pub fn admins(&self) -> &[Address] {
        &self.admins
    }

    /// The domain of the sender's address, for Message-IDs.
    pub fn domain(&self) -> &str {
        self.from.email.domain()
    }

    /// Hands `message` to the server.
    pub async fn send(&self, message: Message) -> Result<(), MailError> {
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(MailError::Refused(e.to_string())),
            Err(e) => Err(MailError::Unavailable(e.to_string())),
        }
    }

    /// A report's message to `to` (an alert's when the letter carries a notice).
    pub fn report_message(
        &self,
        letter: &Letter<'_>,
        rendered: &Rendered,
        to: &Address,
        message_id: &str,
    ) -> Result<Message, MailError> {
        let title = &letter.dashboard.file.title;
        let subject = match letter.notice {
            Some(notice) => notice.subject(title),
            None => format!("{title}: {}", rendered.period),
        };
        let name = &letter.report.spec.name;
        let mut parts = MultiPart::mixed()
            .multipart(MultiPart::alternative_plain_html(letter.text(rendered), letter.html(rendered).into_string()));
        let day = letter.day;
        if let Some(pdf) = &rendered.pdf {
            parts = parts.singlepart(attachment(format!("{name}-{day}.pdf"), "application/pdf", pdf.clone()));
        }
        for (file, bytes) in &rendered.csv {
            let file = format!("{}-{day}.csv", file.trim_end_matches(".csv"));
            parts = parts.singlepart(attachment(file, "text/csv; charset=utf-8", bytes.clone()));
        }
        self.builder(to, message_id).subject(subject).multipart(parts).map_err(|e| MailError::Message(e.to_string()))
    }

    /// A plain message saying what went wrong, to `to` (a recipient told that the report could not
    /// be made, or an administrator told of a failure).
    pub fn notice(&self, to: &Address, message_id: &str, subject: &str, body: String) -> Result<Message, MailError> {
        self.builder(to, message_id)
            .subject(subject)
            .singlepart(SinglePart::plain(body))
            .map_err(|e| MailError::Message(e.to_string()))
    }

    fn builder(&self, to: &Address, message_id: &str) -> lettre::message::MessageBuilder {
        Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to.clone()))
            .message_id(Some(message_id.to_string()))
            .user_agent(concat!("Sokana Analytics ", env!("CARGO_PKG_VERSION")).to_string())
    }
}

fn attachment(file: String, content_type: &str, bytes: Vec<u8>) -> SinglePart {
    // The types are constants that parse.
    let content_type = ContentType::parse(content_type).unwrap_or(ContentType::TEXT_PLAIN);
    Attachment::new(file).body(bytes, content_type)
}

/// What a report's message says besides its figures.
pub struct Letter<'a> {
    pub dashboard: &'a Dashboard,
    pub report: &'a Report,
    /// The live dashboard with the report's filters.
    pub link: String,
    /// The day the report is for, in its time zone (`2026-11-30`), for the files' names.
    pub day: chrono::NaiveDate,
    /// An alert's finding, told before the figures.
    pub notice: Option<&'a super::alert::Notice>,
}

impl Letter<'_> {
    fn text(&self, rendered: &Rendered) -> String {
        let mut text = format!("{}\n{}\n\n", self.dashboard.file.title, rendered.period);
        if let Some(notice) = self.notice {
            text.push_str(&format!("{}\n", notice.subject(&self.report.spec.name)));
            for row in &notice.verdict.rows {
                text.push_str(&format!("  {row}\n"));
            }
            text.push('\n');
        }
        if let Some(warning) = &rendered.warning {
            text.push_str(&format!("Freshness warning. {warning}\n\n"));
        }
        for h in &rendered.headlines {
            text.push_str(&format!("{}: {}", h.title, h.value));
            if !h.previous.is_empty() {
                text.push_str(&format!(" (previous period {}", h.previous));
                if !h.change.is_empty() {
                    text.push_str(&format!(", {}", h.change));
                }
                text.push(')');
            }
            text.push('\n');
        }
        text.push_str(&format!("\nThe live dashboard: {}\n", self.link));
        text.push_str(&format!("\n{}. Data as of {}.\n", attachments(rendered), rendered.data_as_of));
        text
    }

    fn html(&self, rendered: &Rendered) -> maud::Markup {
        maud::html! {
            (maud::DOCTYPE)
            html {
                body style="font-family: sans-serif; color: #1f2937" {
                    h2 style="margin-bottom: 0" { (self.dashboard.file.title) }
                    p style="margin-top: 4px; color: #4b5563" { (rendered.period) }
                    @if let Some(notice) = self.notice {
                        p style="padding: 8px; background: #eef2ff; border-left: 3px solid #3730a3" {
                            strong { (notice.subject(&self.report.spec.name)) }
                        }
                        @if !notice.verdict.rows.is_empty() {
                            ul { @for row in &notice.verdict.rows { li { (row) } } }
                        }
                    }
                    @if let Some(warning) = &rendered.warning {
                        p style="padding: 8px; background: #fff4e5; border-left: 3px solid #c2410c; color: #7c2d12" {
                            strong { "Freshness warning. " } (warning)
                        }
                    }
                    @if !rendered.headlines.is_empty() {
                        table style="border-collapse: collapse" {
                            @for h in &rendered.headlines {
                                tr {
                                    td style="padding: 4px 16px 4px 0" { (h.title) }
                                    td style="padding: 4px 16px 4px 0; text-align: right; font-weight: bold" { (h.value) }
                                    td style="padding: 4px 0; color: #4b5563" {
                                        @if !h.previous.is_empty() { "previous period " (h.previous) " " (h.change) }
                                    }
                                }
                            }
                        }
                    }
                    p { a href=(self.link) { "Open the live dashboard" } }
                    p style="color: #6b7280; font-size: small" {
                        (attachments(rendered)) ". Data as of " (rendered.data_as_of) "."
                    }
                }
            }
        }
    }
}

fn attachments(rendered: &Rendered) -> String {
    match (rendered.pdf.is_some(), rendered.csv.len()) {
        (false, 0) => "Nothing is attached".into(),
        (true, 0) => "The report is attached as a PDF".into(),
        (true, n) => format!("The report is attached as a PDF and {n} CSV file(s)"),
        (false, n) => format!("{n} CSV file(s) attached"),
    }
}
