//! `bytes-server FILE PORT [CODING]`: answers every GET on 127.0.0.1:PORT with FILE's bytes, read
//! once, as `application/json` (with `content-encoding: CODING` when given: FILE is then a body
//! compressed as the served answer was). The floor a served dashboard answer is compared with
//! (benches/dashboard-load).

use axum::http::header;
use axum::response::IntoResponse;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(file), Some(port)) = (args.next(), args.next()) else {
        eprintln!("usage: bytes-server FILE PORT [CODING]");
        std::process::exit(2);
    };
    let coding = args.next().unwrap_or_else(|| "identity".into());
    let body = axum::body::Bytes::from(std::fs::read(&file)?);
    let port: u16 = port.parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let app = axum::Router::new().fallback(move || {
        let (body, coding) = (body.clone(), coding.clone());
        async move {
            ([(header::CONTENT_TYPE, "application/json".to_string()), (header::CONTENT_ENCODING, coding)], body)
                .into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("serving {file} on http://127.0.0.1:{port}");
    axum::serve(listener, app).await
}
