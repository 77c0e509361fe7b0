//! A real SMTP server for the tests (Python's aiosmtpd, installed by the test command, run from
//! `smtp_server.py`): each accepted message is kept as a file, read back here with `mailparse`;
//! addresses given to refuse are answered 550.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct SmtpServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

/// One message as the server received it.
#[derive(Debug)]
pub struct Received {
    pub envelope_to: String,
    pub message_id: String,
    pub subject: String,
    pub to: String,
    pub text: String,
    pub html: String,
    /// `(file name, bytes)`
    pub attachments: Vec<(String, Vec<u8>)>,
}

impl SmtpServer {
    pub fn start(refuse: &[&str]) -> SmtpServer {
        SmtpServer::start_on(super::free_port(), refuse)
    }

    /// Starts the server on `port` (a port a test chose earlier and left closed until now).
    pub fn start_on(port: u16, refuse: &[&str]) -> SmtpServer {
        use std::io::BufRead;
        let dir = tempfile::tempdir().expect("mail dir");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/smtp_server.py");
        let mut command = Command::new("python3");
        command.arg(script).args(["--port", &port.to_string(), "--dir"]).arg(dir.path());
        for address in refuse {
            command.args(["--refuse", address]);
        }
        let mut child =
            command.stdout(Stdio::piped()).spawn().expect("python3 smtp_server.py: the test command installs aiosmtpd");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).expect("the server's first line");
        assert_eq!(line.trim(), "listening", "the SMTP server did not start on port {port}");
        SmtpServer { child, port, dir }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// The messages received so far, in order.
    pub fn messages(&self) -> Vec<Received> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .expect("mail dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        files.sort();
        files.iter().map(|f| parse(&std::fs::read(f).expect("message"))).collect()
    }

    /// Waits until at least `count` messages have arrived (at most `limit`).
    pub fn wait_for(&self, count: usize, limit: Duration) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let messages = self.messages();
            if messages.len() >= count {
                return messages;
            }
            assert!(started.elapsed() < limit, "{} message(s) after {limit:?}, expected {count}", messages.len());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The message `Message-ID`, subject, bodies and attachments of `raw`.
fn parse(raw: &[u8]) -> Received {
    use mailparse::MailHeaderMap;
    let mail = mailparse::parse_mail(raw).expect("a MIME message");
    let header = |name: &str| mail.headers.get_first_value(name).unwrap_or_default();
    let mut received = Received {
        envelope_to: header("X-Envelope-To"),
        message_id: header("Message-ID"),
        subject: header("Subject"),
        to: header("To"),
        text: String::new(),
        html: String::new(),
        attachments: Vec::new(),
    };
    let mut parts = vec![&mail];
    while let Some(part) = parts.pop() {
        parts.extend(part.subparts.iter());
        let disposition = part.get_content_disposition();
        if let Some(file) = disposition.params.get("filename") {
            received.attachments.push((file.clone(), part.get_body_raw().expect("attachment")));
        } else if part.ctype.mimetype == "text/plain" {
            received.text = part.get_body().expect("text");
        } else if part.ctype.mimetype == "text/html" {
            received.html = part.get_body().expect("html");
        }
    }
    received.attachments.sort_by(|a, b| a.0.cmp(&b.0));
    received
}
